"""speechsep.data.loudness.integrated_loudness against pyloudnorm, the reference it replaces in dynamic mixing."""

import math

import numpy as np
import pyloudnorm
import pytest

from speechsep.data.loudness import integrated_loudness


def _signals(sample_rate: int, num_samples: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(num_samples)
    noise = 0.1 * rng.standard_normal(num_samples)
    t = np.arange(num_samples) / sample_rate
    quiet_start = noise.copy()
    quiet_start[: num_samples // 2] *= 1e-3  # blocks below the relative gate
    silent_start = noise.copy()
    silent_start[: num_samples // 3] = 0.0  # blocks below the absolute gate
    return {
        "noise": noise,
        "tone": 0.3 * np.sin(2 * np.pi * 440 * t),  # K-weighting's high shelf does not reach 440 Hz
        "quiet start": quiet_start,
        "silent start": silent_start,
    }


@pytest.mark.parametrize("sample_rate", [8000, 16000, 44100])
@pytest.mark.parametrize("seconds", [0.4, 0.41, 1.0, 3.77])
def test_integrated_loudness_matches_pyloudnorm(sample_rate, seconds):
    num_samples = math.ceil(seconds * sample_rate)
    for name, signal in _signals(sample_rate, num_samples).items():
        expected = pyloudnorm.Meter(sample_rate).integrated_loudness(signal)
        assert integrated_loudness(signal, sample_rate) == pytest.approx(expected, abs=1e-9), name


def test_gating_leaves_out_the_quiet_blocks():
    signal = _signals(8000, 4 * 8000)["quiet start"]
    loud_half = integrated_loudness(signal[len(signal) // 2 :], 8000)
    # Gated, the quiet half does not count: the whole is about as loud as its loud half (the blocks that
    # straddle the two halves cost a few tenths of a dB), where an ungated mean would be 3 dB quieter.
    assert integrated_loudness(signal, 8000) == pytest.approx(loud_half, abs=0.5)


def test_silence_is_minus_infinity_and_short_signals_are_refused():
    assert integrated_loudness(np.zeros(8000), 8000) == -math.inf
    assert integrated_loudness(np.full(8000, 1e-6), 8000) == -math.inf  # below the -70 LUFS gate
    with pytest.raises(ValueError, match="shorter than one 0.4 s gating block"):
        integrated_loudness(np.ones(3199), 8000)
