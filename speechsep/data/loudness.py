"""ITU-R BS.1770 loudness (pyloudnorm's meter) with guards for short and silent signals.

LibriMix sets every source and noise to a random loudness in LUFS; pyloudnorm raises on
signals shorter than one 400 ms gating block and returns -inf on silence, so these helpers
pad short signals and leave silent ones untouched instead of producing NaN or inf.

`integrated_loudness` is pyloudnorm's `Meter.integrated_loudness` for mono signals with its
per-block Python loops replaced by a cumulative sum: dynamic mixing measures two or three crops
per training mixture, and on a 1 s crop pyloudnorm's loops cost more than the rest of the mixing.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pyloudnorm
import scipy.signal

__all__ = ["integrated_loudness", "measure_loudness", "normalize_loudness"]

GATING_BLOCK_SECONDS = 0.4  # pyloudnorm's gating block
_ABSOLUTE_GATE_LUFS = -70.0
_RELATIVE_GATE_LU = -10.0


@functools.lru_cache(maxsize=8)
def _meter(sample_rate: int) -> pyloudnorm.Meter:
    return pyloudnorm.Meter(sample_rate, block_size=GATING_BLOCK_SECONDS)


@functools.lru_cache(maxsize=8)
def _k_weighting(sample_rate: int) -> tuple[np.ndarray, float]:
    """pyloudnorm's K-weighting (high shelf, then high pass) as second-order sections and a gain."""
    stages = list(_meter(sample_rate)._filters.values())
    sections = np.array([np.concatenate([stage.b, stage.a]) / stage.a[0] for stage in stages])
    return sections, math.prod(stage.passband_gain for stage in stages)


def integrated_loudness(signal: np.ndarray, sample_rate: int) -> float:
    """BS.1770-4 gated loudness in LUFS of a mono ``[time]`` signal of at least one gating block.

    Same filters, blocks and gates as ``pyloudnorm.Meter(sample_rate).integrated_loudness`` (a test
    checks they agree); -inf when no block is above the absolute gate.
    """
    meter = _meter(sample_rate)
    block = meter.block_size * sample_rate
    if len(signal) < block:
        raise ValueError(f"{len(signal)} samples are shorter than one {meter.block_size} s gating block")
    sections, gain = _k_weighting(sample_rate)
    weighted = gain * scipy.signal.sosfilt(sections, np.asarray(signal, dtype=np.float64))

    # Mean square of each 400 ms block, blocks 75 % overlapped, bounds rounded as pyloudnorm does
    step = 1.0 - meter.overlap
    num_blocks = int(np.round((len(signal) / sample_rate - meter.block_size) / (meter.block_size * step))) + 1
    starts = np.arange(num_blocks) * step
    lower = (meter.block_size * starts * sample_rate).astype(np.int64)
    upper = np.minimum((meter.block_size * (starts + 1) * sample_rate).astype(np.int64), len(signal))
    energy = np.concatenate([[0.0], np.cumsum(np.square(weighted))])
    mean_square = (energy[upper] - energy[lower]) / block
    with np.errstate(divide="ignore"):
        block_loudness = -0.691 + 10.0 * np.log10(mean_square)

    above_absolute = block_loudness >= _ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return -math.inf
    relative_gate = -0.691 + 10.0 * np.log10(mean_square[above_absolute].mean()) + _RELATIVE_GATE_LU
    gated = (block_loudness > relative_gate) & (block_loudness > _ABSOLUTE_GATE_LUFS)
    if not gated.any():
        return -math.inf
    return float(-0.691 + 10.0 * np.log10(mean_square[gated].mean()))


def measure_loudness(waveform: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of a mono ``[time]`` signal in LUFS; -inf when it is (near) silent.

    Signals shorter than one gating block are zero-padded to one block first.
    """
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono [time] waveform, got shape {waveform.shape}")
    min_length = math.ceil(GATING_BLOCK_SECONDS * sample_rate) + 1
    if len(waveform) < min_length:
        waveform = np.pad(waveform, (0, min_length - len(waveform)))
    return integrated_loudness(waveform, sample_rate)


def normalize_loudness(
    waveform: np.ndarray, sample_rate: int, target_lufs: float
) -> tuple[np.ndarray, float]:
    """Scale ``waveform`` to ``target_lufs``; returns (scaled waveform, linear gain).

    A silent signal (no gating block above -70 LUFS) is returned unchanged with gain 1.
    """
    loudness = measure_loudness(waveform, sample_rate)
    if not math.isfinite(loudness):
        return waveform, 1.0
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    return (waveform * gain).astype(waveform.dtype, copy=False), gain
