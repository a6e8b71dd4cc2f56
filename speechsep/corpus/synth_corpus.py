"""An offline synthetic multi-speaker corpus in the exact LibriMix layout.

WSJ0 is licensed and LibriMix is hundreds of GB, so the demo, the tests and CI use this corpus
instead: eSpeak NG speakers (voice variant x accent x pitch x intonation range x rate) read
random sentences, and the mixtures are written exactly like LibriMix's, so that the same
data-preparation code reads both::

    MiniLibri2Mix/
        wav8k/min/{train-360,dev,test}/{mix_clean,mix_both,s1,s2,noise}/<mixture_ID>.wav
        wav8k/min/metadata/mixture_<split>_{mix_clean,mix_both}.csv   (LibriMix's own place)
        metadata -> wav8k/min/metadata                                 (shortcut)
        sources/{train,dev,test}/<speaker_id>/<utterance_id>.wav       (for dynamic mixing)
        sources/speakers.csv, sources/utterances.csv
        synth_corpus.json                                              (options + summary)

Levels follow LibriMix: every source at a random loudness in [-33, -25] LUFS, the noise in
[-38, -30] LUFS, and everything scaled together when a mixture would peak above 0.9. The
mixtures are integer sums of the written PCM_16 sources, so ``mix_clean == s1 + s2`` and
``mix_both == s1 + s2 + noise`` hold exactly. Paths in the CSVs are absolute, like LibriMix's.

One corpus root holds one set of options: running again with the same options on a complete
corpus does nothing; with other options it fails, unless ``overwrite=True`` replaces it. An
interrupted generation is detected (manifest not marked complete) and started over.

Usage::

    python -m speechsep.corpus.synth_corpus data/            # default size, ~1-2 min on 2 cores
    python -m speechsep.corpus.synth_corpus data/ --size tiny --num-spks 3 --sample-rate 16000
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from speechsep.corpus.espeak import EspeakSynth
from speechsep.corpus.sentences import make_sentence
from speechsep.corpus.synth_noise import random_noise
from speechsep.data.audio import PEAK_LIMIT
from speechsep.data.loudness import normalize_loudness

__all__ = [
    "CorpusOptions",
    "SIZE_PRESETS",
    "SyntheticSpeaker",
    "corpus_root",
    "design_speakers",
    "synthesize_corpus",
]

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
GENERATOR_VERSION = 1

# eSpeak NG accents of English, and Latin-script languages that read English words with
# their own letter-to-sound rules (a strong foreign accent, still speech-like).
ENGLISH_ACCENTS = (
    "en",
    "en-us",
    "en-gb-x-rp",
    "en-029",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
)
OTHER_LANGUAGES = (
    "de",
    "nl",
    "af",
    "sv",
    "da",
    "nb",
    "fr",
    "es",
    "es-419",
    "it",
    "pt",
    "pt-br",
    "ro",
    "ca",
    "pl",
    "cs",
    "sk",
    "hr",
    "fi",
    "et",
    "hu",
    "id",
    "ms",
    "sw",
    "tr",
    "eo",
    "cy",
    "ga",
    "lb",
    "is",
    "sq",
    "lv",
    "lt",
    "sl",
    "mt",
    "ht",
)
# Voice variants of espeak-ng-data/voices/!v, split by the pitch of the voice. Whispered,
# unvoiced and robotic variants (long metallic echoes) are left out.
FEMALE_VARIANTS = (
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "Alicia",
    "Andrea",
    "Annie",
    "anika",
    "aunty",
    "belinda",
    "grandma",
    "linda",
    "shelby",
    "steph",
    "steph2",
    "steph3",
    "zac",
)
MALE_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "Alex",
    "Andy",
    "AnxiousAndy",
    "Denis",
    "Diogo",
    "Gene",
    "Gene2",
    "Henrique",
    "Hugo",
    "Jacky",
    "Lee",
    "Marco",
    "Mario",
    "Michael",
    "Mike",
    "Nguyen",
    "Reed",
    "Storm",
    "Tweaky",
    "adam",
    "announcer",
    "antonio",
    "benjamin",
    "boris",
    "croak",
    "david",
    "ed",
    "edward",
    "edward2",
    "fast",
    "grandpa",
    "gustave",
    "iven",
    "iven2",
    "iven3",
    "iven4",
    "john",
    "kaukovalta",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
    "marcelo",
    "max",
    "michel",
    "miguel",
    "mike2",
    "norbert",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "sandro",
    "travis",
    "victor",
)
PITCH_BOUNDS = (10, 90)  # eSpeak pitch 0..100: about 0.75x .. 1.5x the variant's own pitch
INTONATION_BOUNDS = (15, 95)  # intonation range, 0 = monotone
RATE_BOUNDS = (125, 215)  # words per minute

# Independent random streams: seeds are [seed, stream, ...] so that no choice depends on
# how many draws another part made.
_STREAM_SPEAKERS, _STREAM_SPEECH, _STREAM_PLAN, _STREAM_MIX = range(4)
# Speakers synthesised per worker process; see _synthesize_speakers.
_SPEAKERS_PER_PROCESS = 4
_TRIM_THRESHOLD_DB = -40.0  # relative to the loudest 10 ms frame
_TRIM_MARGIN_SECONDS = 0.05
_MAX_SYNTHESIS_ATTEMPTS = 6
_BABBLE_TALKERS = (3, 6)
_BABBLE_UTTERANCES_PER_TALKER = 2

SIZE_PRESETS: dict[str, dict[str, int]] = {
    # Chosen for a ~10 minute CPU training demo: many speakers, a few thousand short mixtures.
    "default": dict(
        num_train=3000,
        num_dev=150,
        num_test=150,
        num_train_speakers=240,
        num_dev_speakers=30,
        num_test_speakers=30,
        utts_per_speaker=15,
    ),
    # For unit tests: seconds to generate.
    "tiny": dict(
        num_train=6,
        num_dev=3,
        num_test=3,
        num_train_speakers=4,
        num_dev_speakers=3,
        num_test_speakers=3,
        utts_per_speaker=3,
    ),
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


@dataclasses.dataclass(frozen=True)
class SyntheticSpeaker:
    """One synthetic speaker: an eSpeak NG voice with fixed prosody settings."""

    speaker_id: str
    split: str
    language: str
    variant: str
    gender: str  # of the voice variant: "female" or "male"
    pitch: int
    pitch_range: int
    rate: int

    @property
    def voice(self) -> str:
        return f"{self.language}+{self.variant}"


def corpus_root(output_dir: str | Path, num_spks: int = 2) -> Path:
    """Where :func:`synthesize_corpus` puts the corpus: ``<output_dir>/MiniLibri<n>Mix``."""
    return Path(output_dir) / f"MiniLibri{num_spks}Mix"


def _stratified(rng: np.random.Generator, count: int, low: float, high: float) -> np.ndarray:
    """``count`` values covering [low, high] evenly (one per stratum), in random order."""
    return low + (high - low) * (rng.permutation(count) + rng.random(count)) / count


def _cycled(rng: np.random.Generator, choices: Sequence[str], count: int) -> list[str]:
    """``count`` picks that use every choice before repeating one (reshuffled each round)."""
    picks: list[str] = []
    while len(picks) < count:
        picks.extend(choices[index] for index in rng.permutation(len(choices)))
    return picks[:count]


def design_speakers(options: CorpusOptions) -> list[SyntheticSpeaker]:
    """Speaker identities for all splits, as distinct from one another as the voices allow.

    Half the speakers use female voice variants; variants, accents and languages are used
    round-robin, and pitch, intonation range and rate are stratified over their ranges. The
    speakers are then dealt to train/dev/test at random, so that every split spans the space.
    Ids ``spk000``, ``spk001``... are numbered train first, then dev, then test.
    """
    rng = np.random.default_rng([options.seed, _STREAM_SPEAKERS])
    total = sum(options.num_speakers(split) for split in SPLITS)
    is_female = rng.permutation(total) % 2 == 0
    female_variants = iter(_cycled(rng, FEMALE_VARIANTS, int(is_female.sum())))
    male_variants = iter(_cycled(rng, MALE_VARIANTS, int((~is_female).sum())))
    is_english = rng.permutation(total) % 2 == 0
    english = iter(_cycled(rng, ENGLISH_ACCENTS, int(is_english.sum())))
    other = iter(_cycled(rng, OTHER_LANGUAGES, int((~is_english).sum())))
    pitches = _stratified(rng, total, *PITCH_BOUNDS)
    pitch_ranges = _stratified(rng, total, *INTONATION_BOUNDS)
    rates = _stratified(rng, total, *RATE_BOUNDS)
    voices = [
        dict(
            language=next(english) if is_english[index] else next(other),
            variant=next(female_variants) if is_female[index] else next(male_variants),
            gender="female" if is_female[index] else "male",
            pitch=int(round(pitches[index])),
            pitch_range=int(round(pitch_ranges[index])),
            rate=int(round(rates[index])),
        )
        for index in range(total)
    ]
    order = rng.permutation(total)
    splits = [split for split in SPLITS for _ in range(options.num_speakers(split))]
    width = max(3, len(str(total - 1)))
    return [
        SyntheticSpeaker(speaker_id=f"spk{index:0{width}d}", split=split, **voices[voice_index])
        for index, (split, voice_index) in enumerate(zip(splits, order))
    ]


# ----------------------------------------------------------------------------------------
# Single-speaker utterances
# ----------------------------------------------------------------------------------------


def _trim_silence(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut leading and trailing silence, keeping a short margin around the speech."""
    frame = sample_rate // 100
    num_frames = len(waveform) // frame
    if num_frames == 0:
        return waveform
    energy = np.mean(waveform[: num_frames * frame].reshape(num_frames, frame) ** 2, axis=1)
    active = np.flatnonzero(energy > energy.max() * 10 ** (_TRIM_THRESHOLD_DB / 10))
    if active.size == 0:  # digital silence
        return waveform
    margin = int(_TRIM_MARGIN_SECONDS * sample_rate)
    start = max(0, active[0] * frame - margin)
    stop = min(len(waveform), (active[-1] + 1) * frame + margin)
    return waveform[start:stop]


def _speak_utterance(synth: EspeakSynth, speaker: SyntheticSpeaker, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One sentence of random length in UTTERANCE_DURATION_RANGE, at eSpeak's native rate.

    The number of words is corrected from the measured duration until the speech fits; a
    last attempt that is still too long is cut (with a short fade-out).
    """
    min_duration, max_duration = UTTERANCE_DURATION_RANGE
    target = rng.uniform(min_duration, max_duration)
    num_words = max(1, round(target * speaker.rate / 60))
    for _ in range(_MAX_SYNTHESIS_ATTEMPTS):
        text = make_sentence(rng, num_words)
        waveform = synth.synthesize(
            text,
            voice=speaker.voice,
            rate=speaker.rate,
            pitch=speaker.pitch,
            pitch_range=speaker.pitch_range,
            seed=int(rng.integers(2**31)),
        )
        waveform = _trim_silence(waveform, synth.sample_rate)
        duration = len(waveform) / synth.sample_rate
        if min_duration <= duration <= max_duration:
            return waveform, text
        corrected = max(1, round(num_words * target / max(duration, 1e-3)))
        if corrected == num_words:  # rounding stalled: step by one word
            corrected = num_words + 1 if duration < target else max(1, num_words - 1)
        num_words = corrected
    max_length = int(max_duration * synth.sample_rate)
    if len(waveform) > max_length:
        waveform = waveform[:max_length].copy()
        fade = synth.sample_rate // 50
        waveform[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=waveform.dtype)
    return waveform, text


def _to_pcm16(waveform: np.ndarray) -> np.ndarray:
    """Float in [-1, 1) to int16, rounding to the nearest step."""
    return np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)


def _write_pcm16(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    """Write int16 samples as a PCM_16 WAV file.

    Encoded in memory first: closing a real file makes libsndfile fsync it, which costs
    milliseconds per file, and the corpus has tens of thousands of them.
    """
    buffer = io.BytesIO()
    sf.write(buffer, pcm, sample_rate, format="WAV", subtype="PCM_16")
    path.write_bytes(buffer.getvalue())


def _read_float(path: Path) -> np.ndarray:
    waveform, _ = sf.read(path, dtype="float64")
    return waveform


def _utterance_path(root: Path, speaker: SyntheticSpeaker, index: int) -> Path:
    utterance_id = f"{speaker.speaker_id}_{index:04d}"
    return root / "sources" / speaker.split / speaker.speaker_id / f"{utterance_id}.wav"


def _synthesize_speakers(
    speakers: Sequence[tuple[int, SyntheticSpeaker]], options: CorpusOptions, root: Path
) -> list[dict]:
    """Write every utterance of a few speakers to the pool; returns their table rows.

    eSpeak NG carries hidden state from one utterance to the next (its pitch-flutter phase),
    so a worker process only ever synthesises one fixed group of speakers, in order, from a
    fresh start: the audio then does not depend on how the work was spread over processes.
    """
    synth = EspeakSynth()
    rows = []
    for speaker_index, speaker in speakers:
        rng = np.random.default_rng([options.seed, _STREAM_SPEECH, speaker_index])
        for index in range(options.utts_per_speaker):
            waveform, text = _speak_utterance(synth, speaker, rng)
            divisor = math.gcd(options.sample_rate, synth.sample_rate)
            waveform = resample_poly(
                waveform.astype(np.float64),
                options.sample_rate // divisor,
                synth.sample_rate // divisor,
            )
            waveform, _ = normalize_loudness(waveform, options.sample_rate, POOL_LOUDNESS)
            waveform *= min(1.0, MAX_AMPLITUDE / max(np.abs(waveform).max(), 1e-9))
            path = _utterance_path(root, speaker, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_pcm16(path, _to_pcm16(waveform), options.sample_rate)
            rows.append(
                dict(
                    utterance_id=path.stem,
                    speaker_id=speaker.speaker_id,
                    split=speaker.split,
                    path=str(path),
                    num_samples=len(waveform),
                    text=text,
                )
            )
    return rows


# ----------------------------------------------------------------------------------------
# Mixtures
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _MixturePlan:
    """What one mixture is made of, drawn up front so the result does not depend on workers."""

    split: str
    index: int
    source_paths: tuple[Path, ...]
    babble_paths: tuple[tuple[Path, ...], ...]  # per babble talker, a few of their utterances

    @property
    def mixture_id(self) -> str:
        return "_".join(path.stem for path in self.source_paths)


def _plan_mixtures(split: str, utterances: dict[str, list[Path]], options: CorpusOptions) -> list[_MixturePlan]:
    """Draw the speakers, utterances and babble talkers of every mixture of a split.

    Speakers are drawn uniformly without replacement; each speaker's utterances are used in
    shuffled rounds, so that all are used about equally. No two mixtures have the same set
    of utterances. Babble talkers are speakers of the same split other than the mixture's.
    """
    split_index = SPLITS.index(split)
    rng = np.random.default_rng([options.seed, _STREAM_PLAN, split_index])
    speakers = sorted(utterances)
    queues = {speaker: [] for speaker in speakers}

    def next_utterance(speaker: str) -> Path:
        if not queues[speaker]:
            queues[speaker] = [utterances[speaker][i] for i in rng.permutation(len(utterances[speaker]))]
        return queues[speaker].pop()

    plans: list[_MixturePlan] = []
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
        num_talkers = min(len(others), int(rng.integers(_BABBLE_TALKERS[0], _BABBLE_TALKERS[1] + 1)))
        talkers = [others[i] for i in rng.choice(len(others), num_talkers, replace=False)]
        babble_paths = tuple(
            tuple(
                utterances[talker][i]
                for i in rng.choice(
                    len(utterances[talker]),
                    min(_BABBLE_UTTERANCES_PER_TALKER, len(utterances[talker])),
                    replace=False,
                )
            )
            for talker in talkers
        )
        plans.append(_MixturePlan(split, len(plans), source_paths, babble_paths))
    return plans


def _fit_lengths(sources: list[np.ndarray], mode: str) -> list[np.ndarray]:
    """LibriMix's min/max modes: cut to the shortest source, or zero-pad to the longest."""
    if mode == "min":
        length = min(len(source) for source in sources)
        return [source[:length] for source in sources]
    length = max(len(source) for source in sources)
    return [np.pad(source, (0, length - len(source))) for source in sources]


def _render_mixture(plan: _MixturePlan, options: CorpusOptions, root: Path) -> dict[str, object]:
    """Write the sources, noise and both mixtures of one plan; returns their metadata row."""
    rng = np.random.default_rng([options.seed, _STREAM_MIX, SPLITS.index(plan.split), plan.index])
    sample_rate = options.sample_rate
    sources = _fit_lengths([_read_float(path) for path in plan.source_paths], options.mode)
    targets = rng.uniform(*SOURCE_LOUDNESS_RANGE, size=len(sources))
    sources = [normalize_loudness(source, sample_rate, target)[0] for source, target in zip(sources, targets)]
    talkers = [[_read_float(path) for path in paths] for paths in plan.babble_paths]
    noise = random_noise(rng, len(sources[0]), sample_rate, rng.uniform(*NOISE_LOUDNESS_RANGE), talkers).astype(
        np.float64
    )

    clean = np.sum(sources, axis=0)
    peak = max(np.abs(clean).max(), np.abs(clean + noise).max())
    scale = min(1.0, MAX_AMPLITUDE / max(peak, 1e-9))
    # Quantise first and mix in integers, so that the files sum exactly.
    sources_pcm = [_to_pcm16(source * scale) for source in sources]
    noise_pcm = _to_pcm16(noise * scale)
    mix_clean = np.sum(sources_pcm, axis=0, dtype=np.int32)
    tracks = {f"s{i + 1}": pcm for i, pcm in enumerate(sources_pcm)}
    tracks["noise"] = noise_pcm
    tracks["mix_clean"] = mix_clean.astype(np.int16)
    tracks["mix_both"] = (mix_clean + noise_pcm).astype(np.int16)

    split_dir = root / options.wav_dir / SPLIT_FOLDERS[plan.split]
    paths = {}
    for name, pcm in tracks.items():
        paths[name] = split_dir / name / f"{plan.mixture_id}.wav"
        _write_pcm16(paths[name], pcm, sample_rate)
    return dict(mixture_ID=plan.mixture_id, paths=paths, length=len(mix_clean))


def _metadata_row(result: dict, mix_type: str, num_spks: int) -> dict[str, object]:
    """One row of LibriMix's mixture_<split>_<mix_type>.csv."""
    paths = result["paths"]
    row: dict[str, object] = dict(mixture_ID=result["mixture_ID"], mixture_path=paths[mix_type])
    for i in range(num_spks):
        row[f"source_{i + 1}_path"] = paths[f"s{i + 1}"]
    if mix_type == "mix_both":
        row["noise_path"] = paths["noise"]
    row["length"] = result["length"]
    return row


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------
# The whole corpus
# ----------------------------------------------------------------------------------------


# Imported once by the forkserver that starts the workers (not this module itself: the
# workers import it as their main module, and a preloaded copy would make runpy warn).
_WORKER_IMPORTS = (
    "numpy",
    "scipy.fft",
    "scipy.signal",
    "soundfile",
    "pyloudnorm",
    "speechsep.corpus.espeak",
    "speechsep.data.loudness",
    "speechsep.corpus.sentences",
    "speechsep.corpus.synth_noise",
)


def _process_context() -> multiprocessing.context.BaseContext:
    """Start workers from a clean process (forkserver, else spawn), never by forking us.

    A forked worker would inherit this process's eSpeak NG state, which differs after any
    synthesis here (tests do that), and the audio would depend on the caller's history.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that has imported the heavy modules once.
        context.set_forkserver_preload(list(_WORKER_IMPORTS))
        return context
    return multiprocessing.get_context("spawn")


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_manifest(root: Path, manifest: dict) -> None:
    temporary = root / f"{MANIFEST_NAME}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    temporary.replace(root / MANIFEST_NAME)


def _manifest_identity(options: CorpusOptions, root: Path) -> dict:
    return dict(
        generator=__name__,
        version=GENERATOR_VERSION,
        root=str(root),
        options=dataclasses.asdict(options),
    )


def _prepare_root(root: Path, identity: dict, overwrite: bool) -> bool:
    """Decide what to do with an existing ``root``; True when it is already complete.

    Complete with the same identity: keep. Complete with another: fail, or wipe when
    ``overwrite``. Incomplete (an interrupted run): wipe. A folder without our manifest is
    never touched.
    """
    manifest = _read_manifest(root)
    if manifest is not None:
        complete = bool(manifest.get("complete"))
        if complete and all(manifest.get(key) == value for key, value in identity.items()):
            return True
        if complete and not overwrite:
            old_options = manifest.get("options", {})
            differences = {
                key: (old_options.get(key), value)
                for key, value in identity["options"].items()
                if old_options.get(key) != value
            }
            if manifest.get("root") != identity["root"]:
                differences["root"] = (manifest.get("root"), identity["root"])
            raise FileExistsError(
                f"{root} holds a synthetic corpus made with other options (old, new: "
                f"{differences or 'generator version'}); pass overwrite=True (--overwrite) to "
                "replace it, or use another output_dir"
            )
        logger.info("Replacing %s (%s)", root, "overwrite" if complete else "incomplete")
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and is not a synthetic corpus (no {MANIFEST_NAME}): refusing to write into it"
        )
    root.mkdir(parents=True, exist_ok=True)
    _write_manifest(root, dict(identity, complete=False))
    return False


def _disk_megabytes(root: Path) -> float:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) / 1e6


def _default_num_workers() -> int:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, usable or 1)


def _synthesize_pool(context, num_workers: int, options: CorpusOptions, root: Path) -> list[dict]:
    """Write ``sources/``: every utterance of every speaker, plus speakers.csv and utterances.csv."""
    speakers = design_speakers(options)
    indexed = list(enumerate(speakers))
    groups = [indexed[i : i + _SPEAKERS_PER_PROCESS] for i in range(0, len(indexed), _SPEAKERS_PER_PROCESS)]
    # maxtasksperchild=1: a fresh process per group, see _synthesize_speakers.
    with context.Pool(num_workers, maxtasksperchild=1) as pool:
        work = partial(_synthesize_speakers, options=options, root=root)
        utterance_rows = [row for rows in pool.imap(work, groups) for row in rows]
    speaker_rows = [
        dict(
            speaker_id=s.speaker_id,
            split=s.split,
            voice=s.voice,
            language=s.language,
            variant=s.variant,
            gender=s.gender,
            pitch=s.pitch,
            pitch_range=s.pitch_range,
            rate=s.rate,
        )
        for s in speakers
    ]
    _write_csv(root / "sources" / "speakers.csv", speaker_rows)
    _write_csv(root / "sources" / "utterances.csv", utterance_rows)
    return utterance_rows


def _synthesize_mixtures(
    context, num_workers: int, options: CorpusOptions, root: Path, utterance_rows: list[dict]
) -> dict[str, list[dict]]:
    """Write the LibriMix part (wav folders and metadata CSVs); returns each split's results."""
    plans: list[_MixturePlan] = []
    for split in SPLITS:
        utterances: dict[str, list[Path]] = {}
        for row in utterance_rows:
            if row["split"] == split:
                utterances.setdefault(row["speaker_id"], []).append(Path(row["path"]))
        plans.extend(_plan_mixtures(split, utterances, options))
        split_dir = root / options.wav_dir / SPLIT_FOLDERS[split]
        for track in [f"s{i + 1}" for i in range(options.num_spks)] + ["noise", *MIX_TYPES]:
            (split_dir / track).mkdir(parents=True, exist_ok=True)
    with context.Pool(num_workers) as pool:
        work = partial(_render_mixture, options=options, root=root)
        results = pool.map(work, plans, chunksize=16)

    metadata_dir = root / options.wav_dir / "metadata"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    results_by_split = {
        split: [result for plan, result in zip(plans, results) if plan.split == split] for split in SPLITS
    }
    for split, split_results in results_by_split.items():
        for mix_type in MIX_TYPES:
            _write_csv(
                metadata_dir / f"mixture_{SPLIT_FOLDERS[split]}_{mix_type}.csv",
                [_metadata_row(result, mix_type, options.num_spks) for result in split_results],
            )
    shortcut = root / "metadata"
    try:
        shortcut.symlink_to(metadata_dir.relative_to(root), target_is_directory=True)
    except OSError:  # no symlinks (some Windows setups): a copy will do
        shutil.copytree(metadata_dir, shortcut)
    return results_by_split


def synthesize_corpus(
    output_dir: str | Path,
    num_spks: int = 2,
    sample_rate: int = 8000,
    mode: str = "min",
    num_train: int = SIZE_PRESETS["default"]["num_train"],
    num_dev: int = SIZE_PRESETS["default"]["num_dev"],
    num_test: int = SIZE_PRESETS["default"]["num_test"],
    num_train_speakers: int = SIZE_PRESETS["default"]["num_train_speakers"],
    num_dev_speakers: int = SIZE_PRESETS["default"]["num_dev_speakers"],
    num_test_speakers: int = SIZE_PRESETS["default"]["num_test_speakers"],
    utts_per_speaker: int = SIZE_PRESETS["default"]["utts_per_speaker"],
    seed: int = 0,
    num_workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Generate (or reuse) the synthetic LibriMix-style corpus; returns its root folder.

    Arguments
    ---------
    output_dir : the corpus goes to ``<output_dir>/MiniLibri<num_spks>Mix``.
    num_spks : speakers per mixture (2 or 3 like LibriMix; more also works).
    sample_rate : of every file, a multiple of 1000 Hz (folder ``wav8k`` for 8000).
    mode : "min" cuts each mixture to its shortest source, "max" zero-pads to the longest.
    num_train, num_dev, num_test : number of mixtures per split.
    num_train_speakers, num_dev_speakers, num_test_speakers : disjoint speakers per split.
    utts_per_speaker : single-speaker utterances per speaker in ``sources/``.
    seed : everything is a function of the options above: same seed, same bytes.
    num_workers : worker processes (default: the usable CPUs, at most 8); no effect on output.
    overwrite : replace an existing corpus made with other options instead of failing.
    """
    options = CorpusOptions(
        num_spks=num_spks,
        sample_rate=sample_rate,
        mode=mode,
        num_train=num_train,
        num_dev=num_dev,
        num_test=num_test,
        num_train_speakers=num_train_speakers,
        num_dev_speakers=num_dev_speakers,
        num_test_speakers=num_test_speakers,
        utts_per_speaker=utts_per_speaker,
        seed=seed,
    )
    num_workers = _default_num_workers() if num_workers is None else num_workers
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    root = corpus_root(output_dir, num_spks).absolute()  # CSVs hold absolute paths, like LibriMix
    identity = _manifest_identity(options, root)
    if _prepare_root(root, identity, overwrite):
        logger.info("%s is complete for these options: nothing to do", root)
        return root

    start = time.perf_counter()
    context = _process_context()
    utterance_rows = _synthesize_pool(context, num_workers, options, root)
    logger.info("Synthesised %d utterances in %.1f s", len(utterance_rows), time.perf_counter() - start)
    results = _synthesize_mixtures(context, num_workers, options, root, utterance_rows)

    seconds = time.perf_counter() - start
    summary = dict(
        speakers={split: options.num_speakers(split) for split in SPLITS},
        utterances=len(utterance_rows),
        source_hours=round(sum(row["num_samples"] for row in utterance_rows) / sample_rate / 3600, 3),
        mixtures={split: len(results[split]) for split in SPLITS},
        mixture_hours={
            split: round(sum(result["length"] for result in results[split]) / sample_rate / 3600, 3) for split in SPLITS
        },
        megabytes=round(_disk_megabytes(root), 1),
        seconds=round(seconds, 1),
        num_workers=num_workers,
    )
    _write_manifest(root, dict(identity, complete=True, summary=summary))
    logger.info("Wrote %s in %.1f s", root, seconds)
    return root


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: ``python -m speechsep.corpus.synth_corpus OUTPUT_DIR [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m speechsep.corpus.synth_corpus",
        description="Generate an offline synthetic speech-separation corpus in the LibriMix "
        "layout (eSpeak NG speakers, synthetic noise).",
    )
    parser.add_argument("output_dir", type=Path, help="the corpus goes to OUTPUT_DIR/MiniLibri<n>Mix")
    parser.add_argument(
        "--size",
        choices=sorted(SIZE_PRESETS),
        default="default",
        help="preset sizes; the --num-* options below override single values",
    )
    parser.add_argument("--num-spks", type=int, default=2, help="speakers per mixture")
    parser.add_argument("--sample-rate", type=int, default=8000, help="Hz, a multiple of 1000")
    parser.add_argument("--mode", choices=("min", "max"), default="min")
    for key in SIZE_PRESETS["default"]:
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=int,
            default=None,
            help=f"(default: {SIZE_PRESETS['default'][key]}, tiny: {SIZE_PRESETS['tiny'][key]})",
        )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=None, help="default: usable CPUs, at most 8")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing corpus made with other options")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    sizes = dict(SIZE_PRESETS[args.size])
    sizes.update({key: getattr(args, key) for key in sizes if getattr(args, key) is not None})
    start = time.perf_counter()
    try:
        root = synthesize_corpus(
            args.output_dir,
            num_spks=args.num_spks,
            sample_rate=args.sample_rate,
            mode=args.mode,
            seed=args.seed,
            num_workers=args.num_workers,
            overwrite=args.overwrite,
            **sizes,
        )
    except (ValueError, FileExistsError) as error:  # bad options or an occupied folder
        parser.exit(2, f"error: {error}\n")
    options = CorpusOptions(**(_read_manifest(root) or {})["options"])
    summary = (_read_manifest(root) or {}).get("summary", {})
    print(f"Corpus:   {root}")
    print(f"Mixtures: {root / options.wav_dir}/{{{','.join(SPLIT_FOLDERS.values())}}}/")
    print(f"Metadata: {root / options.wav_dir / 'metadata'}")
    print(f"Sources:  {root / 'sources'}/{{{','.join(SPLITS)}}}/ (+ speakers.csv, utterances.csv)")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    print(f"Done in {time.perf_counter() - start:.1f} s")
    return root


if __name__ == "__main__":
    # Run through the importable module, so that workers pickle functions by their real name.
    from speechsep.corpus.synth_corpus import main as _main

    _main()
