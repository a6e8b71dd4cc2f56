"""What eSpeak NG's voices lack and real talkers and recordings have: vocal-tract size, an unsteady voice, breath and
microphones.

eSpeak NG's variants share a few vocal tracts, hold their pitch perfectly steady between intonation targets and
produce no aspiration noise, and every file sounds as if recorded by the same ideal microphone. A separation
model trained on them learns those regularities and fails on recorded speech. Each transform here undoes one,
drawn per speaker (what belongs to a person) or per utterance (the microphone's colouring). The transformed
utterance is the source: the clean single-speaker target that mixtures are made of. Rooms are left out:
reverberant sources made the demo model worse on real speech (docs/experiments.md).

Every function takes its random draws from the generator it is given, so the corpus stays a function of its seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import butter, firwin2, oaconvolve, sosfilt, sosfiltfilt

# Per speaker: vocal-tract length as a scale of all frequencies (formants and pitch together, by resampling);
# adult talkers of one sex differ by about this much (Fant's formant scale factors).
FORMANT_SCALE_RANGE = (0.9, 1.1)
# Per speaker: how unsteady the voice is, as the standard deviation of the instantaneous speaking-rate
# (hence pitch) deviation, a slow random wobble on top of eSpeak's intonation.
WOBBLE_RANGE = (0.005, 0.03)
WOBBLE_HZ = 6.0  # how fast the wobble moves (low-pass cut-off of the random rate)
# Per speaker: aspiration noise relative to the voice (dB), shaped by the voice's own envelope.
BREATH_DB_RANGE = (-35.0, -15.0)
BREATH_HIGHPASS_HZ = 1000.0
ENVELOPE_SECONDS = 0.005
# Per utterance: the microphone and room colouring, a smooth random frequency response: a tilt (dB per octave
# about 1 kHz) plus random bumps (dB, standard deviation) at a few points per octave, and a high-pass (Hz).
TILT_DB_PER_OCTAVE_RANGE = (-4.0, 4.0)
BUMP_DB = 3.0
BUMP_POINTS_PER_OCTAVE = 2
HIGHPASS_HZ_RANGE = (40.0, 250.0)
HIGHPASS_ORDER = 1  # run twice (forwards and backwards): 12 dB per octave
COLOURING_TAPS = 129


def warp_time(
    waveform: np.ndarray, sample_rate: int, scale: float, wobble: float, rng: np.random.Generator
) -> np.ndarray:
    """Play ``waveform`` ``scale`` times faster on average, the rate wobbling by ``wobble`` (relative std).

    Faster playback raises formants and pitch together (a shorter vocal tract, a higher voice) and shortens the
    utterance; the wobble makes pitch and timing drift like a human voice. The input should be sampled well above
    the corpus rate: the linear interpolation's images then lie above what the later resampling keeps.
    """
    num_out = max(1, int(len(waveform) / scale))
    step = int(sample_rate / WOBBLE_HZ)
    knots = rng.standard_normal(num_out // step + 2)
    deviation = np.interp(np.arange(num_out) / step, np.arange(len(knots)), knots)
    deviation *= wobble / max(np.std(deviation), 1e-9) if num_out > step else 0.0
    positions = np.cumsum(scale * (1.0 + deviation)) - scale * (1.0 + deviation[0])
    positions *= (len(waveform) - 1) / max(positions[-1], 1e-9)  # end where the utterance ends
    return np.interp(positions, np.arange(len(waveform)), waveform)


@lru_cache
def _breath_highpass(sample_rate: int) -> np.ndarray:
    """The aspiration noise's high-pass, designed once per rate rather than once per utterance."""
    return butter(4, BREATH_HIGHPASS_HZ, "highpass", fs=sample_rate, output="sos")


def add_breath(waveform: np.ndarray, sample_rate: int, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add high-passed noise that follows the voice's envelope, ``level_db`` below it (aspiration)."""
    window = max(1, int(ENVELOPE_SECONDS * sample_rate))
    envelope = np.sqrt(np.maximum(uniform_filter1d(waveform**2, window), 0.0))
    noise = sosfilt(_breath_highpass(sample_rate), rng.standard_normal(len(waveform))) * envelope
    noise_rms, voice_rms = np.sqrt(np.mean(noise**2)), np.sqrt(np.mean(waveform**2))
    if noise_rms == 0.0 or voice_rms == 0.0:
        return waveform
    return waveform + noise * (voice_rms / noise_rms) * 10 ** (level_db / 20)


def colour_recording(waveform: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Filter with a random microphone/room response: a smooth tilt and bumps, then a high-pass; zero phase.

    The smooth part is a linear-phase FIR filter (its delay removed), the high-pass a Butterworth filter run
    forwards and backwards: the result stays aligned with the input, sample for sample.
    """
    nyquist = sample_rate / 2
    points = np.geomspace(62.5, nyquist, int(np.log2(nyquist / 62.5) * BUMP_POINTS_PER_OCTAVE) + 1)
    gain_db = rng.uniform(*TILT_DB_PER_OCTAVE_RANGE) * np.log2(points / 1000.0)
    gain_db += rng.normal(0.0, BUMP_DB, len(points))
    frequencies = np.concatenate([[0.0], points])
    gains = 10 ** (np.concatenate([gain_db[:1], gain_db]) / 20)
    taps = firwin2(COLOURING_TAPS, frequencies, gains, fs=sample_rate)
    smooth = oaconvolve(waveform, taps, mode="same")  # odd length: centred, the linear phase's delay removed
    highpass = butter(HIGHPASS_ORDER, rng.uniform(*HIGHPASS_HZ_RANGE), "highpass", fs=sample_rate, output="sos")
    return sosfiltfilt(highpass, smooth)
