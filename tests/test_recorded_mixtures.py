"""Two-speaker test mixtures from a folder of recordings (speechsep.data.recorded_mixtures)."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechsep.data.audio import PEAK_LIMIT
from speechsep.data.manifests import read_manifest
from speechsep.data.recorded_mixtures import RecordingsError, make_mixtures, recordings_by_speaker
from tests.speech import speech_like

SAMPLE_RATE = 8000
SPEAKERS = {"anna": 220.0, "bob": 110.0, "carl": 140.0}


@pytest.fixture
def recordings(tmp_path) -> Path:
    """Short one-word "recordings", FSDD-style names `{digit}_{speaker}_{index}.wav`, some at 16 kHz."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for speaker, f0 in SPEAKERS.items():
        for index in range(4):
            rate = 16000 if index == 0 else SAMPLE_RATE
            word = 0.1 * speech_like(int(rng.uniform(0.3, 0.6) * rate), rate, rng, f0=f0, pauses=False)
            sf.write(folder / f"{index}_{speaker}_{index}.wav", word.astype(np.float32), rate)
    return folder


def make(recordings, output, **options):
    return make_mixtures(recordings, output, num_mixtures=6, speaker_regex=r"^\d+_([a-z]+)_", **options)


def test_mixtures_are_the_sum_of_two_different_speakers_at_wsj0_levels(recordings, tmp_path):
    manifest = make(recordings, tmp_path / "out")
    rows = read_manifest(manifest, str(tmp_path), ["mix_wav", "s1_wav", "s2_wav"])
    assert len(rows) == 6
    for mixture_id, row in rows.items():
        _, first, second = mixture_id.split("_")
        assert first != second and {first, second} <= set(SPEAKERS)
        mixture, rate = sf.read(row["mix_wav"])
        s1, s2 = sf.read(row["s1_wav"])[0], sf.read(row["s2_wav"])[0]
        assert rate == SAMPLE_RATE and len(mixture) == len(s1) == len(s2) >= 3 * SAMPLE_RATE
        assert np.abs(mixture - (s1 + s2)).max() <= 2 / 32768  # one quantisation step per written source
        assert np.abs(mixture).max() <= PEAK_LIMIT + 1 / 32768
        relative_db = 20 * np.log10(np.mean(np.abs(s2)) / np.mean(np.abs(s1)))
        assert -15 < relative_db < 10  # WSJ0-2mix: N(-2.5, 2.7) dB


def test_same_seed_same_files_other_seed_other_mixtures(recordings, tmp_path):
    first = make(recordings, tmp_path / "a", seed=3)
    second = make(recordings, tmp_path / "b", seed=3)
    other = make(recordings, tmp_path / "c", seed=4)
    names = sorted(p.name for p in (tmp_path / "a" / "test" / "mixture").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b" / "test" / "mixture").iterdir())
    for name in names:
        assert (tmp_path / "a/test/mixture" / name).read_bytes() == (tmp_path / "b/test/mixture" / name).read_bytes()
    assert first.read_text().replace("/a/", "/b/") == second.read_text()
    assert first.read_text().replace("/a/", "/c/") != other.read_text()


def test_speakers_come_from_folders_without_a_regex(tmp_path):
    for speaker in ("x", "y"):
        (tmp_path / speaker).mkdir()
        sf.write(tmp_path / speaker / "1.wav", np.zeros(100, dtype=np.float32), SAMPLE_RATE)
    assert sorted(recordings_by_speaker(tmp_path)) == ["x", "y"]


def test_one_speaker_or_a_name_outside_the_regex_is_one_line(recordings, tmp_path):
    with pytest.raises(RecordingsError, match="recordings of 1 speaker"):
        recordings_by_speaker(recordings)  # one folder, no regex: one speaker
    (recordings / "noise.wav").write_bytes((recordings / "0_bob_0.wav").read_bytes())
    with pytest.raises(RecordingsError, match=r"noise.wav does not match --speaker-regex"):
        recordings_by_speaker(recordings, r"^\d+_([a-z]+)_")
