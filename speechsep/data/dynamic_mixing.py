"""Dynamic mixing: training mixtures drawn on the fly from a pool of single-speaker utterances.

Mixing new speaker pairs, crops and levels every epoch instead of replaying a fixed list of mixtures is how
SepFormer's published WSJ0-2mix results were trained (Subakan et al., 2021). `DynamicMixingDataset` is a map-style dataset:
mixture `index` of an epoch is a pure function of (seed, epoch, index) and the talker-count weights in use, so it
does not depend on which worker or rank builds it; ranks get different mixtures because the DistributedSampler hands
them different indices, and SpeechBrain's SaveableDataLoader can resume in the middle of an epoch.

Only paths, frame counts and speaker ids are kept in memory; each mixture reads just the frames it uses.

Example
-------
>>> dataset = dynamic_mixing_dataset(                                 # doctest: +SKIP
...     "LibriSpeech/train-clean-360", sample_rate=8000, cache_dir="results/dm_cache",
...     num_spks=2, segment_len=32000, epoch_len=20000, level_scheme="librimix")
>>> dataset.set_epoch(epoch)   # in Brain.on_stage_start, before the loader iterator is created
>>> loader = make_dataloader(dataset, batch_size=1, num_workers=4, collate_fn=PaddedBatch)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchaudio

from speechsep.data.audio import PEAK_LIMIT
from speechsep.data.loudness import GATING_BLOCK_SECONDS, integrated_loudness
from speechsep.data.rooms import ROOM_DISTRIBUTIONS, Room, room_images

from speechsep.data.source_pool import SILENCE_RMS, AudioIndex, PoolError, SourcePool, read_mono

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Level schemes: the gain of every source and of the noise
# --------------------------------------------------------------------------------------------------
def _rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) if len(signal) else 0.0


def _gain(target_db: float, level_db: float | None) -> float:
    """Linear gain from `level_db` to `target_db`; 1 for silent signals (level None)."""
    return 1.0 if level_db is None else 10.0 ** ((target_db - level_db) / 20.0)


class Wsj0Levels:
    """Levels of upstream SpeechBrain's WSJ0Mix dynamic mixing, fit to wsj0-2mix.

    A level is the mean absolute amplitude in dB (SpeechBrain's `rescale(..., amp_type="avg")`). The
    first speaker gets N(-27.43, 2.57) dB, every other speaker the first one's level plus
    N(-2.51, 2.66) dB, all clipped to [-45, 0] dB. Upstream leaves the third speaker of 3-speaker
    mixtures at its file's level; here it is drawn like the second. Noise follows WHAM!: the louder
    speaker is 6 dB below to 3 dB above the noise, uniformly.
    """

    first_db = (-27.43, 2.57)
    relative_db = (-2.51, 2.66)
    clip_db = (-45.0, 0.0)
    speech_to_noise_db = (-6.0, 3.0)

    @staticmethod
    def level_db(signal: np.ndarray) -> float | None:
        """Mean absolute amplitude in dB, or None for a silent signal."""
        if _rms(signal) < SILENCE_RMS:
            return None
        return 20.0 * math.log10(float(np.mean(np.abs(signal), dtype=np.float64)))

    def gains(
        self, rng: np.random.Generator, sources: Sequence[np.ndarray], noise: np.ndarray | None
    ) -> tuple[list[float], float | None]:
        """Gains for `sources` ([time] each) and `noise` (None without noise)."""
        first = np.clip(rng.normal(*self.first_db), *self.clip_db)
        others = np.clip(first + rng.normal(*self.relative_db, len(sources) - 1), *self.clip_db)
        targets = np.concatenate([[first], others])
        source_gains = [_gain(t, self.level_db(s)) for t, s in zip(targets, sources)]
        if noise is None:
            return source_gains, None
        noise_target = targets.max() - rng.uniform(*self.speech_to_noise_db)
        return source_gains, _gain(noise_target, self.level_db(noise))


class LibriMixLevels:
    """Levels of the LibriMix generation scripts: loudness (ITU-R BS.1770, `pyloudnorm`) drawn uniformly,
    speakers in [-33, -25] LUFS, noise in [-38, -30] LUFS.

    The BS.1770 meter needs 0.4 s of signal and gives -inf for near silence; shorter signals are
    measured by their RMS instead (loudness without the K-weighting) and silent ones keep their level.
    """

    def __init__(
        self,
        sample_rate: int,
        speech_lufs: tuple[float, float] = (-33.0, -25.0),
        noise_lufs: tuple[float, float] = (-38.0, -30.0),
    ):
        self.sample_rate = sample_rate
        self.min_frames = math.ceil(GATING_BLOCK_SECONDS * sample_rate)
        self.speech_lufs = speech_lufs
        self.noise_lufs = noise_lufs

    def loudness(self, signal: np.ndarray) -> float | None:
        """Integrated loudness in LUFS, or None for a silent signal."""
        rms = _rms(signal)
        if rms < SILENCE_RMS:
            return None
        if len(signal) >= self.min_frames:
            loudness = integrated_loudness(signal, self.sample_rate)
            if math.isfinite(loudness):
                return loudness
        return -0.691 + 20.0 * math.log10(rms)

    def gains(
        self, rng: np.random.Generator, sources: Sequence[np.ndarray], noise: np.ndarray | None
    ) -> tuple[list[float], float | None]:
        """Gains for `sources` ([time] each) and `noise` (None without noise)."""
        targets = rng.uniform(*self.speech_lufs, len(sources))
        source_gains = [_gain(t, self.loudness(s)) for t, s in zip(targets, sources)]
        if noise is None:
            return source_gains, None
        return source_gains, _gain(rng.uniform(*self.noise_lufs), self.loudness(noise))


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------
class Mixture(NamedTuple):
    """One dynamic mixture and its parts; `mixture` is exactly `images` summed (+ `noise`), in that order."""

    mixture: np.ndarray  # [time]
    sources: np.ndarray  # [num_spks, time]: the targets (with a room, the direct paths)
    noise: np.ndarray | None  # [time]
    images: np.ndarray  # [num_spks, time]: the sources as the mixture holds them (with a room, reverberant)
    room: Room | None


def _sum_signals(sources: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
    """sources[0] + sources[1] + ... (+ noise), in that order, so that callers can check it exactly."""
    mixture = sources[0].copy()
    for source in sources[1:]:
        mixture += source
    if noise is not None:
        mixture += noise
    return mixture


class DynamicMixingDataset(torch.utils.data.Dataset):
    """`epoch_len` new mixtures per epoch, each built on the fly from `pool`.

    Mixture `index` of the current epoch is drawn from an RNG seeded by (seed, epoch, index):
    `num_spks` distinct speakers (uniformly over speakers), one utterance of each (uniformly over its
    utterances), a random crop of `segment_len` samples of each. With `talker_counts` (e.g. [1, 2, 3] for a model
    of num_spks=3 outputs), each mixture first draws how many talkers it holds (`talker_count_weights`: the
    relative frequency of each count; None, all alike); the sources beyond that count are zero. Utterances shorter than the segment
    are zero-padded at a random offset; noise files shorter than it are looped. Optional speed
    perturbation resamples each source by a factor drawn from `speed_perturb` (percent; 105 = 5 %
    faster) before cropping. Levels follow `level_scheme` ("wsj0" or "librimix", see `Wsj0Levels` and
    `LibriMixLevels`), measured on the utterance without its padding. If any signal peaks above 0.9,
    mixture, sources and noise are scaled down together. The mixture is computed last, from the
    returned float32 sources: mix_sig == s1_sig + s2_sig (+ s3_sig) (+ noise_sig) exactly.

    With `rooms` ("whamr", see `speechsep.data.rooms.ShoeboxRooms`), each mixture also gets a simulated room:
    the mixture is then the sum of the sources' reverberant images (+ the noise, dry as in WHAMR!) and the
    returned sources are their direct paths, WHAMR!'s anechoic targets.

    Call `set_epoch` (and `set_talker_count_weights`, for a curriculum) before each epoch's loader iterator is
    created (Brain.on_stage_start), so that new workers see them; workers kept alive across epochs
    (`persistent_workers=True`) would not.
    Batch with `collate_fn=speechbrain.dataio.batch.PaddedBatch`.
    """

    LEVEL_SCHEMES = ("wsj0", "librimix")

    def __init__(
        self,
        pool: SourcePool,
        num_spks: int,
        sample_rate: int,
        segment_len: int,
        epoch_len: int,
        level_scheme: str = "wsj0",
        noise_files: AudioIndex | None = None,
        speed_perturb: Sequence[int] | None = None,
        seed: int = 0,
        rooms: str | None = None,
        talker_counts: Sequence[int] | None = None,
        talker_count_weights: Sequence[float] | None = None,
    ):
        self.talker_counts, self.talker_count_probabilities = talker_count_distribution(
            num_spks, talker_counts, talker_count_weights
        )
        most_talkers = max(self.talker_counts)
        if len(pool.speakers) < most_talkers:
            need = f"num_spks={num_spks}" if talker_counts is None else f"{most_talkers} (talker_counts {talker_counts})"
            raise PoolError(
                f"{pool.folder} holds {len(pool.speakers)} speakers ({pool.layout} layout) but mixtures "
                f"need {need} distinct speakers"
            )
        for name, value in (("num_spks", num_spks), ("segment_len", segment_len), ("epoch_len", epoch_len)):
            if value < 1:
                raise ValueError(f"{name} must be a positive number, got {value}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if level_scheme == "wsj0":
            self.levels = Wsj0Levels()
        elif level_scheme == "librimix":
            self.levels = LibriMixLevels(sample_rate)
        else:
            raise ValueError(f"level_scheme must be one of {self.LEVEL_SCHEMES}, got {level_scheme!r}")
        if rooms is not None and rooms not in ROOM_DISTRIBUTIONS:
            raise ValueError(f"rooms must be None or one of {tuple(ROOM_DISTRIBUTIONS)}, got {rooms!r}")
        self.rooms = ROOM_DISTRIBUTIONS[rooms]() if rooms is not None else None
        self.speeds = [int(speed) for speed in speed_perturb] if speed_perturb else [100]
        if min(self.speeds) <= 0:
            raise ValueError(f"speed_perturb must hold positive percentages, got {speed_perturb}")
        # Resampling kernels are built once per speed; modules, not closures, so that spawn can pickle them.
        self.speed_resamplers = {
            speed: torchaudio.transforms.Resample(orig_freq=speed, new_freq=100)
            for speed in set(self.speeds) - {100}
        }
        self.pool = pool
        self.num_spks = num_spks
        self.sample_rate = sample_rate
        self.segment_len = segment_len
        self.epoch_len = epoch_len
        self.level_scheme = level_scheme
        self.noise_files = noise_files
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose mixtures `__getitem__` builds."""
        self.epoch = int(epoch)

    def set_talker_count_weights(self, weights: Sequence[float] | None) -> None:
        """Draw the talker counts with these relative frequencies from now on (None: all alike)."""
        _, self.talker_count_probabilities = talker_count_distribution(self.num_spks, self.talker_counts, weights)

    def __len__(self) -> int:
        return self.epoch_len

    def __getitem__(self, index: int) -> dict[str, str | torch.Tensor]:
        mixture = self.draw(index)
        example = {"id": f"dm_e{self.epoch}_{index}", "mix_sig": torch.from_numpy(mixture.mixture)}
        for number, source in enumerate(mixture.sources, start=1):
            example[f"s{number}_sig"] = torch.from_numpy(source)
        if mixture.noise is not None:
            example["noise_sig"] = torch.from_numpy(mixture.noise)
        return example

    def draw(self, index: int) -> Mixture:
        """Mixture `index` of the current epoch with its parts (what `__getitem__` returns, as numpy arrays)."""
        if not 0 <= index < self.epoch_len:
            raise IndexError(f"Mixture index {index} is outside [0, {self.epoch_len})")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        num_talkers = self.num_spks
        if len(self.talker_counts) > 1 or num_talkers != self.talker_counts[0]:
            num_talkers = int(rng.choice(self.talker_counts, p=self.talker_count_probabilities))
        speakers = rng.choice(len(self.pool.speakers), size=num_talkers, replace=False)
        utterances = [self._read_utterance(rng, speaker) for speaker in speakers]  # [<= segment_len] each
        noise = self._read_noise(rng) if self.noise_files is not None else None  # [segment_len]
        gains, noise_gain = self.levels.gains(rng, utterances, noise)

        sources = np.zeros((self.num_spks, self.segment_len), dtype=np.float32)  # [num_spks, time]
        for source, utterance, gain in zip(sources, utterances, gains):
            offset = rng.integers(0, self.segment_len - len(utterance) + 1)
            source[offset : offset + len(utterance)] = utterance * np.float32(gain)
        if noise is not None:
            noise *= np.float32(noise_gain)
        room, images = None, sources  # images: the sources as the mixture holds them, [num_spks, time]
        if self.rooms is not None:  # drawn last, so that the dry mixtures are those of a run without rooms
            room = self.rooms.draw(rng, num_talkers)
            talkers, talker_images = room_images(room, sources[:num_talkers], self.sample_rate)
            sources, images = np.zeros_like(sources), np.zeros_like(sources)
            sources[:num_talkers], images[:num_talkers] = talkers, talker_images

        mixture = _sum_signals(images, noise)
        peak = max(np.abs(signal).max() for signal in (mixture, sources, images, noise) if signal is not None)
        if peak > PEAK_LIMIT:
            scale = np.float32(PEAK_LIMIT / peak)
            sources = sources * scale
            images = images * scale if room is not None else sources
            noise = noise * scale if noise is not None else None
            mixture = _sum_signals(images, noise)
        return Mixture(mixture, sources, noise, images, room)

    def _read_utterance(self, rng: np.random.Generator, speaker: int) -> np.ndarray:
        """A random crop of a random utterance of `speaker`, speed-perturbed: [<= segment_len]."""
        file_index = rng.choice(self.pool.utterances_of_speaker[speaker])
        speed = self.speeds[rng.integers(len(self.speeds))]
        # A speed of s % turns n frames into n * 100 / s: read just enough for the segment.
        needed = math.ceil(self.segment_len * speed / 100)
        num_frames = int(self.pool.files.num_frames[file_index])
        start = rng.integers(0, max(num_frames - needed, 0) + 1)
        utterance = read_mono(self.pool.files.paths[file_index], start, min(needed, num_frames))
        if speed != 100:
            utterance = self.speed_resamplers[speed](torch.from_numpy(utterance)).numpy()
        return utterance[: self.segment_len]

    def _read_noise(self, rng: np.random.Generator) -> np.ndarray:
        """A random crop of a random noise file, looped if shorter than the segment: [segment_len]."""
        file_index = rng.integers(len(self.noise_files))
        num_frames = int(self.noise_files.num_frames[file_index])
        start = rng.integers(0, max(num_frames - self.segment_len, 0) + 1)
        noise = read_mono(self.noise_files.paths[file_index], start, min(self.segment_len, num_frames))
        return np.resize(noise, self.segment_len)


def talker_count_distribution(
    num_spks: int, talker_counts: Sequence[int] | None, weights: Sequence[float] | None
) -> tuple[list[int], list[float]]:
    """The talker counts a mixture may hold and their probabilities; ValueError naming what is wrong with them.
    None: every mixture holds `num_spks` talkers."""
    if talker_counts is None:
        if weights is not None:
            raise ValueError("talker_count_weights goes with talker_counts")
        return [num_spks], [1.0]
    counts = list(talker_counts) if isinstance(talker_counts, (list, tuple)) else [talker_counts]
    if not isinstance(talker_counts, (list, tuple)) or not counts or any(
        isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in counts
    ):
        raise ValueError(f"talker_counts must be a list of whole numbers of talkers, got {talker_counts}")
    if any(not 1 <= c <= num_spks for c in counts) or len(set(counts)) != len(counts):
        raise ValueError(
            f"talker_counts {counts} must be distinct counts from 1 to num_spks={num_spks} (the model's outputs)"
        )
    if weights is None:
        return [int(c) for c in counts], [1.0 / len(counts)] * len(counts)
    if not isinstance(weights, (list, tuple)):
        raise ValueError(f"talker_count_weights must be a list of numbers, one per talker count, got {weights!r}")
    weights = list(weights)
    if len(weights) != len(counts):
        raise ValueError(
            f"talker_count_weights has {len(weights)} values for the {len(counts)} talker_counts {counts}: one each"
        )
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0 for w in weights) or (
        not 0 < sum(weights) < math.inf
    ):
        raise ValueError(f"talker_count_weights {weights} must be finite, non-negative and not all zero")
    return [int(c) for c in counts], [w / sum(weights) for w in weights]


def dynamic_mixing_dataset(
    source_folder: str | Path,
    sample_rate: int,
    noise_folder: str | Path | None = None,
    cache_dir: str | Path | None = None,
    **options,
) -> DynamicMixingDataset:
    """Index `source_folder` (and `noise_folder`, a folder of noise files such as WHAM!'s tr/noise) and
    build a `DynamicMixingDataset`; `options` are its other arguments (num_spks, segment_len, ...).

    Under DDP, build it once on the main process first (`run_on_main`) so that the other ranks only
    read the cache.
    """
    pool = SourcePool.from_folder(source_folder, sample_rate, cache_dir)
    noise_files = None
    if noise_folder is not None:
        noise_files = AudioIndex.from_folder(noise_folder, sample_rate, cache_dir)
    return DynamicMixingDataset(pool, sample_rate=sample_rate, noise_files=noise_files, **options)
