"""The synthetic corpus's options: what determines its files, its sizes, its splits and random streams."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from speechsep.data.audio import PEAK_LIMIT

logger = logging.getLogger(__name__)


SPLITS = ("train", "dev", "test")
# Folder names of the splits in the LibriMix part of the layout.
SPLIT_FOLDERS = {"train": "train-360", "dev": "dev", "test": "test"}
MIX_TYPES = ("mix_clean", "mix_both")
SOURCE_LOUDNESS_RANGE = (-33.0, -25.0)  # LUFS, as in LibriMix
NOISE_LOUDNESS_RANGE = (-38.0, -30.0)  # LUFS, as in LibriMix
MAX_AMPLITUDE = PEAK_LIMIT  # LibriMix's peak limit for mixtures
# The pool sits at the top of the source range, so mixing only ever attenuates it.
POOL_LOUDNESS = -25.0
UTTERANCE_DURATION_RANGE = (2.0, 6.0)  # seconds
MANIFEST_NAME = "synth_corpus.json"
# Bump when the generated audio changes for the same options, so old corpora are redone.
GENERATOR_VERSION = 2


# Independent random streams: seeds are [seed, stream, ...] so that no choice depends on
# how many draws another part made.
STREAM_SPEAKERS, STREAM_SPEECH, STREAM_PLAN, STREAM_MIX, STREAM_VARIATION = range(5)
# Speakers synthesised per worker process; see synthesize_speakers.
SPEAKERS_PER_PROCESS = 4
TRIM_THRESHOLD_DB = -40.0  # relative to the loudest 10 ms frame
TRIM_MARGIN_SECONDS = 0.05
MAX_SYNTHESIS_ATTEMPTS = 6
BABBLE_TALKERS = (3, 6)
BABBLE_UTTERANCES_PER_TALKER = 2


# The order of a preset's sizes: mixtures per split, disjoint speakers per split, utterances per speaker.
SIZE_KEYS = (*[f"num_{split}" for split in SPLITS], *[f"num_{split}_speakers" for split in SPLITS], "utts_per_speaker")
SIZE_PRESETS: dict[str, dict[str, int]] = {
    # For the demo's time-boxed CPU training: many speakers with few utterances each (docs/experiments.md).
    "default": dict(zip(SIZE_KEYS, (3000, 150, 150, 480, 30, 30, 8), strict=True)),
    # For unit tests: seconds to generate.
    "tiny": dict(zip(SIZE_KEYS, (6, 3, 3, 4, 3, 3, 3), strict=True)),
}


@dataclasses.dataclass(frozen=True)
class CorpusOptions:
    """Everything that determines the generated files (and only that)."""

    num_spks: int = 2
    sample_rate: int = 8000
    mode: str = "min"
    num_train: int = SIZE_PRESETS["default"]["num_train"]
    num_dev: int = SIZE_PRESETS["default"]["num_dev"]
    num_test: int = SIZE_PRESETS["default"]["num_test"]
    num_train_speakers: int = SIZE_PRESETS["default"]["num_train_speakers"]
    num_dev_speakers: int = SIZE_PRESETS["default"]["num_dev_speakers"]
    num_test_speakers: int = SIZE_PRESETS["default"]["num_test_speakers"]
    utts_per_speaker: int = SIZE_PRESETS["default"]["utts_per_speaker"]
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_spks < 2:
            raise ValueError(f"num_spks must be at least 2, got {self.num_spks}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.sample_rate <= 0 or self.sample_rate % 1000:
            raise ValueError(f"sample_rate must be a multiple of 1000 Hz, got {self.sample_rate}")
        for split in SPLITS:
            if self.num_speakers(split) < self.num_spks:
                raise ValueError(
                    f"num_{split}_speakers={self.num_speakers(split)} is too few for "
                    f"num_spks={self.num_spks} distinct speakers per mixture"
                )
            if self.num_mixtures(split) < 1:
                raise ValueError(f"num_{split} must be at least 1, got {self.num_mixtures(split)}")
        if self.utts_per_speaker < 1:
            raise ValueError(f"utts_per_speaker must be at least 1, got {self.utts_per_speaker}")

    def num_speakers(self, split: str) -> int:
        return getattr(self, f"num_{split}_speakers")

    def num_mixtures(self, split: str) -> int:
        return getattr(self, f"num_{split}")

    @property
    def wav_dir(self) -> str:
        """``wav8k/min``: where LibriMix keeps the mixtures of this rate and mode."""
        return f"wav{self.sample_rate // 1000}k/{self.mode}"


def corpus_root(output_dir: str | Path, num_spks: int = 2) -> Path:
    """Where :func:`synthesize_corpus` puts the corpus: ``<output_dir>/MiniLibri<n>Mix``."""
    return Path(output_dir) / f"MiniLibri{num_spks}Mix"
