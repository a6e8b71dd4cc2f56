"""ITU-R BS.1770 loudness (pyloudnorm) with guards for short and silent signals.

LibriMix sets every source and noise to a random loudness in LUFS; pyloudnorm raises on
signals shorter than one 400 ms gating block and returns -inf on silence, so these helpers
pad short signals and leave silent ones untouched instead of producing NaN or inf.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pyloudnorm

__all__ = ["measure_loudness", "normalize_loudness"]

_BLOCK_SECONDS = 0.4  # pyloudnorm's gating block


@functools.lru_cache(maxsize=8)
def _meter(sample_rate: int) -> pyloudnorm.Meter:
    return pyloudnorm.Meter(sample_rate, block_size=_BLOCK_SECONDS)


def measure_loudness(waveform: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of a mono ``[time]`` signal in LUFS; -inf when it is (near) silent.

    Signals shorter than one gating block are zero-padded to one block first.
    """
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono [time] waveform, got shape {waveform.shape}")
    min_length = math.ceil(_BLOCK_SECONDS * sample_rate) + 1
    if len(waveform) < min_length:
        waveform = np.pad(waveform, (0, min_length - len(waveform)))
    loudness = _meter(sample_rate).integrated_loudness(waveform.astype(np.float64))
    return float(loudness) if np.isfinite(loudness) else -math.inf


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
