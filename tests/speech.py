"""The one speech-like signal generator of the tests and benches, and oracle-mask estimates.

Random noise is a poor stand-in for a separator's output: real estimates are mostly the right
speaker plus some leakage and artefacts, which is where metric implementations disagree. These
helpers make such estimates without any data: harmonic "voices" with gliding pitch, formants and
syllable envelopes, mixed together, then separated with a perturbed ideal ratio mask.
"""

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import istft, lfilter, resample_poly, stft


def speech_like(
    num_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
    f0: float | None = None,
    intonation: float | None = None,
    pauses: bool = True,
    formants: bool = True,
) -> np.ndarray:
    """One speech-like signal [time] with unit RMS.

    Voiced harmonics (gliding f0, two formant peaks) under a syllable-rate envelope with pauses,
    plus short high-passed noise bursts standing in for fricatives. `f0` fixes the speaker's base
    pitch (else drawn in 90-240 Hz); `intonation=0` keeps the pitch steady at `f0` (else each of three
    slow pitch movements has a depth drawn in 3-12 %); `pauses=False` leaves out the leading silence and
    the pauses between words, so that every stretch of a few hundred ms is voiced; `formants=False` gives
    the harmonics a plain 1/k roll-off, so that most of a voice's energy sits at its own pitch (what a model
    of a few thousand parameters can learn to separate in a few epochs).
    """
    time = np.arange(num_samples) / sample_rate
    # Pitch: a speaker-specific base f0 with slow intonation movements.
    base_f0 = rng.uniform(90.0, 240.0) if f0 is None else f0
    pitch_movement = sum(
        (rng.uniform(0.03, 0.12) if intonation is None else intonation)
        * np.sin(2 * np.pi * rng.uniform(0.2, 3.0) * time + rng.uniform(0, 2 * np.pi))
        for _ in range(3)
    )
    pitch = base_f0 * (1.0 + pitch_movement)  # [time]
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate

    # Harmonics weighted by a spectral tilt and two formant bumps; zeroed above Nyquist.
    formant_freqs = rng.uniform([300.0, 900.0], [900.0, 2500.0])
    voiced = np.zeros(num_samples)
    for harmonic in range(1, int(sample_rate / 2 / np.min(pitch)) + 1):
        freq = harmonic * pitch
        if formants:
            weight = sum(np.exp(-0.5 * ((freq - formant) / 150.0) ** 2) for formant in formant_freqs)
            weight = (weight + 0.05) / harmonic**0.5 * (freq < sample_rate / 2)
        else:
            weight = (freq < sample_rate / 2) / harmonic
        voiced += weight * np.sin(harmonic * phase + rng.uniform(0, 2 * np.pi))

    # Envelopes are drawn at a 1 kHz control rate, smoothed, then interpolated to the sample rate.
    control_time = np.arange(0.0, num_samples / sample_rate, 1e-3)
    # Syllables (~4 per second) separated by short gaps, and longer pauses between words.
    envelope = np.zeros(len(control_time))
    lead = rng.uniform(0.0, 0.3)
    start = lead if pauses else 0.0
    while start < control_time[-1]:
        duration = rng.uniform(0.1, 0.3)
        envelope[(control_time >= start) & (control_time < start + duration)] = rng.uniform(0.3, 1.0)
        syllable_gap, word_gap = rng.uniform(0.02, 0.08), rng.uniform(0.2, 0.5)
        start += duration + (rng.choice([syllable_gap, word_gap]) if pauses else syllable_gap)
    envelope = np.interp(time, control_time, gaussian_filter1d(envelope, sigma=15.0))

    # Fricative-like bursts: high-passed noise, about three 30 ms bursts per second.
    bursts = gaussian_filter1d((rng.random(len(control_time)) < 3e-3).astype(float), sigma=30.0)
    bursts = np.interp(time, control_time, bursts / max(bursts.max(), 1e-12))
    noise = lfilter([1.0, -0.95], [1.0], rng.standard_normal(num_samples))
    signal = envelope * voiced + 0.3 * bursts * noise
    # A signal too short to reach its first syllable or burst stays silent rather than becoming NaN.
    return signal / max(np.sqrt(np.mean(signal**2)), 1e-12)


def speech_like_mixture(
    num_samples: int,
    num_spks: int,
    sample_rate: int,
    rng: np.random.Generator,
    snr_db: float = 30.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A mixture [time] and its references [time, num_spks].

    Sources get WSJ0-2mix-like relative gains (within +-2.5 dB); white noise at `snr_db` is added
    to the mixture only, so that estimates carry artefacts the references do not explain.
    """
    gains_db = rng.uniform(-2.5, 2.5, size=num_spks)
    sources = np.stack(
        [0.1 * 10 ** (gain / 20) * speech_like(num_samples, sample_rate, rng) for gain in gains_db], axis=-1
    )
    mixture = sources.sum(axis=-1)
    noise = rng.standard_normal(num_samples)
    mixture = mixture + noise * np.sqrt(np.mean(mixture**2) / np.mean(noise**2)) * 10 ** (-snr_db / 20)
    return mixture, sources


def ratio_mask_estimates(
    mixture: np.ndarray,
    sources: np.ndarray,
    rng: np.random.Generator,
    mask_error: float = 0.15,
    n_fft: int = 256,
) -> np.ndarray:
    """Separate `mixture` [time] with a perturbed ideal ratio mask; returns estimates [time, num_spks].

    `mask_error` is the std of the noise added to the oracle mask: 0 gives oracle estimates, 0.1-0.3
    gives SDRs of a typical (10-20 dB) to a weak (~5 dB) separator.
    """
    _, _, mixture_stft = stft(mixture, nperseg=n_fft)  # [freq, frames]
    _, _, sources_stft = stft(sources.T, nperseg=n_fft)  # [num_spks, freq, frames]
    magnitudes = np.abs(sources_stft)
    masks = magnitudes / np.maximum(magnitudes.sum(axis=0, keepdims=True), 1e-12)
    masks = np.clip(masks + mask_error * rng.standard_normal(masks.shape), 0.0, 1.0)
    _, est_sources = istft(masks * mixture_stft, nperseg=n_fft)  # [num_spks, time]
    return est_sources[:, : mixture.shape[-1]].T


def mask_separation_example(
    num_spks: int,
    num_samples: int,
    sample_rate: int = 8000,
    seed: int = 0,
    mask_error: float = 0.15,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A mixture [time], its references [time, num_spks] and separated estimates [time, num_spks].

    Voices are made at twice `sample_rate` and decimated, so they are band-limited like the 8 kHz
    WSJ0-2mix/LibriMix versions (ill-conditioned correlations near Nyquist included). Estimates come
    in a random speaker order, as a separator's would.
    """
    rng = np.random.default_rng(seed)
    mixture, sources = speech_like_mixture(2 * num_samples, num_spks, 2 * sample_rate, rng)
    mixture, sources = resample_poly(mixture, 1, 2), resample_poly(sources, 1, 2, axis=0)
    est_sources = ratio_mask_estimates(mixture, sources, rng, mask_error=mask_error)
    return mixture, sources, est_sources[:, rng.permutation(num_spks)]
