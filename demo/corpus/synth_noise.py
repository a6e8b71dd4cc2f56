"""Synthetic background noises for the ``mix_both`` mixtures of the synthetic corpus.

WHAM! noise (what LibriMix uses) cannot be shipped, so each mixture gets a random blend of
coloured noise (white to brown), mains hum with harmonics, and babble from other talkers.
Every generator takes a ``numpy.random.Generator``, so a noise is fixed by its seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft

from speechsep.data.loudness import normalize_loudness

__all__ = ["coloured_noise", "mains_hum", "babble", "random_noise"]


def _slow_envelope(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """A random amplitude modulation below 1 Hz, so that the noise is not stationary."""
    time = np.arange(num_samples) / sample_rate
    depth = rng.uniform(0.0, 0.5)
    return 1.0 + depth * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * time + rng.uniform(0, 2 * np.pi))


def coloured_noise(rng: np.random.Generator, num_samples: int, sample_rate: int, exponent: float) -> np.ndarray:
    """Gaussian noise with a 1/f**exponent power spectrum, ``[time]`` with unit RMS.

    ``exponent`` 0 is white, 1 pink, 2 brown (Brownian); values in between blend them.
    """
    fft_length = scipy.fft.next_fast_len(num_samples, real=True)
    spectrum = scipy.fft.rfft(rng.standard_normal(fft_length))
    frequencies = scipy.fft.rfftfreq(fft_length, d=1.0 / sample_rate)
    # Below 20 Hz the shaping would blow up: keep it flat there, and drop DC.
    shaping = np.maximum(frequencies, 20.0) ** (-exponent / 2.0)
    shaping[0] = 0.0
    noise = scipy.fft.irfft(spectrum * shaping, n=fft_length)[:num_samples]
    noise *= _slow_envelope(rng, num_samples, sample_rate)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def mains_hum(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """50 or 60 Hz hum with decaying, randomly weighted harmonics, ``[time]`` with unit RMS."""
    fundamental = rng.choice((50.0, 60.0)) * rng.uniform(0.99, 1.01)
    max_harmonic = int(min(20, 0.45 * sample_rate / fundamental))
    harmonics = np.arange(1, max_harmonic + 1)
    amplitudes = harmonics ** -rng.uniform(0.5, 2.0) * rng.uniform(0.2, 1.0, len(harmonics))
    if rng.random() < 0.5:  # a buzzier hum: odd harmonics dominate
        amplitudes[1::2] *= rng.uniform(0.05, 0.5)
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    # Harmonic k is the k-th power of the fundamental's phasor: one complex exponential for
    # all harmonics instead of one sine per harmonic and sample.
    phasor = np.exp(2j * np.pi * fundamental / sample_rate * np.arange(num_samples))
    power = np.ones(num_samples, dtype=complex)
    hum = np.zeros(num_samples)
    for amplitude, phase in zip(amplitudes, phases):
        power *= phasor
        hum += amplitude * np.imag(power * np.exp(1j * phase))
    hum *= _slow_envelope(rng, num_samples, sample_rate)
    return hum / (np.sqrt(np.mean(hum**2)) + 1e-12)


def babble(
    rng: np.random.Generator,
    num_samples: int,
    talkers: Sequence[Sequence[np.ndarray]],
) -> np.ndarray:
    """Several talkers speaking at once, ``[time]`` with unit RMS.

    Arguments
    ---------
    talkers : for each talker, their utterances ``[time]``; each talker's utterances are
        chained in random order from a random start until ``num_samples`` are filled.
    """
    mixture = np.zeros(num_samples)
    for utterances in talkers:
        if sum(len(utterance) for utterance in utterances) == 0:
            raise ValueError("every babble talker needs at least one non-empty utterance")
        order = rng.permutation(len(utterances))
        stream = []
        stream_length = 0
        while stream_length < 2 * num_samples:  # twice as long, to start at a random offset
            for index in order:
                stream.append(utterances[index])
                stream_length += len(utterances[index])
        chained = np.concatenate(stream)
        start = rng.integers(0, len(chained) - num_samples + 1)
        mixture += chained[start : start + num_samples] * 10 ** (rng.uniform(-6.0, 0.0) / 20.0)
    return mixture / (np.sqrt(np.mean(mixture**2)) + 1e-12)


def random_noise(
    rng: np.random.Generator,
    num_samples: int,
    sample_rate: int,
    target_lufs: float,
    babble_talkers: Sequence[Sequence[np.ndarray]] = (),
) -> np.ndarray:
    """A random blend of coloured noise, hum and babble at ``target_lufs``, ``[time]`` float32.

    Each component is present with probability 0.6 (at least one is), at a random level
    within 12 dB of the others. Babble needs ``babble_talkers`` (see :func:`babble`).
    """
    components = ["coloured", "hum"] + (["babble"] if babble_talkers else [])
    present = [name for name in components if rng.random() < 0.6]
    if not present:
        present = [components[rng.integers(len(components))]]
    noise = np.zeros(num_samples)
    for name in present:
        if name == "coloured":
            component = coloured_noise(rng, num_samples, sample_rate, rng.uniform(0.0, 2.0))
        elif name == "hum":
            component = mains_hum(rng, num_samples, sample_rate)
        else:
            component = babble(rng, num_samples, babble_talkers)
        # Equal loudness first, then a random offset: hum and white noise differ a lot in
        # loudness at equal RMS.
        component, _ = normalize_loudness(component, sample_rate, -30.0)
        noise += component * 10 ** (rng.uniform(-12.0, 0.0) / 20.0)
    noise, _ = normalize_loudness(noise, sample_rate, target_lufs)
    return noise.astype(np.float32)
