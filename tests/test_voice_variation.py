"""The corpus transforms that make eSpeak NG's voices more like recorded talkers (demo.corpus.voice_variation)."""

import numpy as np
import pytest

from demo.corpus import voice_variation as variation
from demo.corpus.espeak import EspeakSynth
from demo.corpus.options import CorpusOptions
from demo.corpus.utterances import vary_utterance
from demo.corpus.voices import design_speakers

SAMPLE_RATE = 22050


def _tone(frequency: float, seconds: float = 2.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    return np.sin(2 * np.pi * frequency * np.arange(int(seconds * sample_rate)) / sample_rate)


def _peak_frequency(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / sample_rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("scale", [0.9, 1.1])
def test_warp_scales_every_frequency_and_the_duration(scale):
    warped = variation.warp_time(_tone(200.0), SAMPLE_RATE, scale, 0.0, np.random.default_rng(0))
    assert len(warped) == int(2 * SAMPLE_RATE / scale)
    assert _peak_frequency(warped) == pytest.approx(200.0 * scale, abs=1.0)


def test_wobble_moves_the_pitch_by_about_its_size_and_keeps_the_ends():
    tone = _tone(200.0, seconds=4.0)
    warped = variation.warp_time(tone, SAMPLE_RATE, 1.0, 0.03, np.random.default_rng(0))
    assert len(warped) == len(tone) and warped[0] == tone[0] and warped[-1] == pytest.approx(tone[-1])
    # instantaneous frequency from zero crossings, over 50 ms frames
    crossings = np.flatnonzero(np.diff(np.signbit(warped)))
    periods = np.diff(crossings[::2]) / SAMPLE_RATE
    relative_deviation = np.std(1 / periods) / 200.0
    assert 0.015 < relative_deviation < 0.06
    steady = variation.warp_time(tone, SAMPLE_RATE, 1.0, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(steady, tone, atol=1e-9)


def test_breath_is_high_passed_noise_at_the_requested_level_that_follows_the_voice():
    voice = np.concatenate([_tone(150.0, 1.0), np.zeros(SAMPLE_RATE)])  # one second of voice, one of silence
    breathy = variation.add_breath(voice, SAMPLE_RATE, -20.0, np.random.default_rng(0))
    noise = breathy - voice
    level = 10 * np.log10(np.mean(noise**2) / np.mean(voice**2))
    assert level == pytest.approx(-20.0, abs=0.01)
    assert np.max(np.abs(noise[SAMPLE_RATE + 200 :])) < 1e-6  # none in the silence
    assert _peak_frequency(noise) > variation.BREATH_HIGHPASS_HZ / 2
    np.testing.assert_array_equal(variation.add_breath(np.zeros(100), SAMPLE_RATE, -20.0, np.random.default_rng(0)), 0)


def test_colouring_is_a_bounded_smooth_response_with_a_high_pass_and_no_delay():
    impulse = np.zeros(8000)
    impulse[4000] = 1.0
    for seed in range(20):
        response = variation.colour_recording(impulse, 8000, np.random.default_rng(seed))
        assert len(response) == len(impulse) and np.argmax(np.abs(response)) == 4000
        spectrum = np.fft.rfft(response)
        frequencies = np.fft.rfftfreq(len(response), 1 / 8000)
        gain_db = 20 * np.log10(np.abs(spectrum) + 1e-12)
        band = (frequencies > 300) & (frequencies < 3500)
        # a tilt of at most 4 dB/octave over +-2 octaves about 1 kHz, plus bumps of 3 dB std
        assert np.all(np.abs(gain_db[band]) < 25)
        assert gain_db[0] < -60 and np.mean(gain_db[(frequencies > 5) & (frequencies < 20)]) < -12
    first, again = (variation.colour_recording(impulse, 8000, np.random.default_rng(1)) for _ in range(2))
    np.testing.assert_array_equal(first, again)


def test_speaker_traits_span_their_ranges_and_stay_out_of_the_espeak_settings():
    options = CorpusOptions()
    speakers = design_speakers(options)
    for field, (low, high) in [
        ("formant_scale", variation.FORMANT_SCALE_RANGE),
        ("wobble", variation.WOBBLE_RANGE),
        ("breath_db", variation.BREATH_DB_RANGE),
    ]:
        values = np.array([getattr(speaker, field) for speaker in speakers])
        assert np.all((values >= low - 1e-3) & (values <= high + 1e-3))
        # stratified: every fifth of the range is used
        assert len(np.unique(np.floor((values - low) / (high - low) * 5).clip(0, 4))) == 5
    again = design_speakers(options)
    assert speakers == again


def test_a_varied_utterance_is_deterministic_for_its_random_generator_and_differs_by_speaker():
    speakers = design_speakers(CorpusOptions(num_train_speakers=4, num_dev_speakers=2, num_test_speakers=2))
    waveform = EspeakSynth().synthesize("Seven ships sailed at dawn.", voice=speakers[0].voice)
    first = vary_utterance(waveform, 22050, 8000, speakers[0], np.random.default_rng(3))
    again = vary_utterance(waveform, 22050, 8000, speakers[0], np.random.default_rng(3))
    other = vary_utterance(waveform, 22050, 8000, speakers[1], np.random.default_rng(3))
    np.testing.assert_array_equal(first, again)
    assert np.all(np.isfinite(first))
    expected_length = round(len(waveform) / speakers[0].formant_scale * 8000 / 22050)
    assert abs(len(first) - expected_length) <= 1
    assert len(other) != len(first) or not np.allclose(other, first)
