"""Mixtures of the synthetic corpus: planned up front (independent of workers), rendered as LibriMix does."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from demo.corpus.options import (
    BABBLE_TALKERS,
    BABBLE_UTTERANCES_PER_TALKER,
    MAX_AMPLITUDE,
    NOISE_LOUDNESS_RANGE,
    SOURCE_LOUDNESS_RANGE,
    SPLIT_FOLDERS,
    SPLITS,
    STREAM_MIX,
    STREAM_PLAN,
    CorpusOptions,
)
from demo.corpus.synth_noise import random_noise
from demo.corpus.utterances import read_float, to_pcm16, write_int16_wav
from speechsep.data.loudness import normalize_loudness

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Mixtures
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MixturePlan:
    """What one mixture is made of, drawn up front so the result does not depend on workers."""

    split: str
    index: int
    source_paths: tuple[Path, ...]
    babble_paths: tuple[tuple[Path, ...], ...]  # per babble talker, a few of their utterances

    @property
    def mixture_id(self) -> str:
        return "_".join(path.stem for path in self.source_paths)


def plan_mixtures(split: str, utterances: dict[str, list[Path]], options: CorpusOptions) -> list[MixturePlan]:
    """Draw the speakers, utterances and babble talkers of every mixture of a split.

    Speakers are drawn uniformly without replacement; each speaker's utterances are used in
    shuffled rounds, so that all are used about equally. No two mixtures have the same set
    of utterances. Babble talkers are speakers of the same split other than the mixture's.
    """
    split_index = SPLITS.index(split)
    rng = np.random.default_rng([options.seed, STREAM_PLAN, split_index])
    speakers = sorted(utterances)
    queues = {speaker: [] for speaker in speakers}

    def next_utterance(speaker: str) -> Path:
        if not queues[speaker]:
            queues[speaker] = [utterances[speaker][i] for i in rng.permutation(len(utterances[speaker]))]
        return queues[speaker].pop()

    plans: list[MixturePlan] = []
    seen: set[frozenset[Path]] = set()
    draws = 0
    while len(plans) < options.num_mixtures(split):
        draws += 1
        if draws > 100 * options.num_mixtures(split):
            raise ValueError(
                f"could not draw {options.num_mixtures(split)} distinct {split} mixtures from "
                f"{len(speakers)} speakers x {options.utts_per_speaker} utterances: "
                "use fewer mixtures or more speakers/utterances"
            )
        chosen = [speakers[i] for i in rng.choice(len(speakers), options.num_spks, replace=False)]
        source_paths = tuple(next_utterance(speaker) for speaker in chosen)
        if frozenset(source_paths) in seen:
            continue
        seen.add(frozenset(source_paths))
        others = [speaker for speaker in speakers if speaker not in chosen]
        num_talkers = min(len(others), int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1)))
        talkers = [others[i] for i in rng.choice(len(others), num_talkers, replace=False)]
        babble_paths = tuple(
            tuple(
                utterances[talker][i]
                for i in rng.choice(
                    len(utterances[talker]),
                    min(BABBLE_UTTERANCES_PER_TALKER, len(utterances[talker])),
                    replace=False,
                )
            )
            for talker in talkers
        )
        plans.append(MixturePlan(split, len(plans), source_paths, babble_paths))
    return plans


def _fit_lengths(sources: list[np.ndarray], mode: str) -> list[np.ndarray]:
    """LibriMix's min/max modes: cut to the shortest source, or zero-pad to the longest."""
    if mode == "min":
        length = min(len(source) for source in sources)
        return [source[:length] for source in sources]
    length = max(len(source) for source in sources)
    return [np.pad(source, (0, length - len(source))) for source in sources]


def render_mixture(plan: MixturePlan, options: CorpusOptions, root: Path) -> dict[str, object]:
    """Write the sources, noise and both mixtures of one plan; returns their metadata row."""
    rng = np.random.default_rng([options.seed, STREAM_MIX, SPLITS.index(plan.split), plan.index])
    sample_rate = options.sample_rate
    sources = _fit_lengths([read_float(path) for path in plan.source_paths], options.mode)
    targets = rng.uniform(*SOURCE_LOUDNESS_RANGE, size=len(sources))
    sources = [normalize_loudness(source, sample_rate, target)[0] for source, target in zip(sources, targets)]
    talkers = [[read_float(path) for path in paths] for paths in plan.babble_paths]
    noise = random_noise(rng, len(sources[0]), sample_rate, rng.uniform(*NOISE_LOUDNESS_RANGE), talkers).astype(
        np.float64
    )

    clean = np.sum(sources, axis=0)
    peak = max(np.abs(clean).max(), np.abs(clean + noise).max())
    scale = min(1.0, MAX_AMPLITUDE / max(peak, 1e-9))
    # Quantise first and mix in integers, so that the files sum exactly.
    sources_pcm = [to_pcm16(source * scale) for source in sources]
    noise_pcm = to_pcm16(noise * scale)
    mix_clean = np.sum(sources_pcm, axis=0, dtype=np.int32)
    tracks = {f"s{i + 1}": pcm for i, pcm in enumerate(sources_pcm)}
    tracks["noise"] = noise_pcm
    tracks["mix_clean"] = mix_clean.astype(np.int16)
    tracks["mix_both"] = (mix_clean + noise_pcm).astype(np.int16)

    split_dir = root / options.wav_dir / SPLIT_FOLDERS[plan.split]
    paths = {}
    for name, pcm in tracks.items():
        paths[name] = split_dir / name / f"{plan.mixture_id}.wav"
        write_int16_wav(paths[name], pcm, sample_rate)
    return dict(mixture_ID=plan.mixture_id, paths=paths, length=len(mix_clean))


def metadata_row(result: dict, mix_type: str, num_spks: int) -> dict[str, object]:
    """One row of LibriMix's mixture_<split>_<mix_type>.csv."""
    paths = result["paths"]
    row: dict[str, object] = dict(mixture_ID=result["mixture_ID"], mixture_path=paths[mix_type])
    for i in range(num_spks):
        row[f"source_{i + 1}_path"] = paths[f"s{i + 1}"]
    if mix_type == "mix_both":
        row["noise_path"] = paths["noise"]
    row["length"] = result["length"]
    return row
