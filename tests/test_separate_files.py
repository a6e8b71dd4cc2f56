"""separate.py's tracks on disk with stand-in separators: races, overwrites, reruns, full disks, levels, inputs."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

import separate
from speechsep.inference import files
from speechsep.inference.files import FileSeparator, SeparationOptions, expand_inputs
from tests.helpers import (
    REPO,
    SAMPLE_RATE,
    OracleSeparator,
    error_lines,
    limit_file_size,
    sharing_separator,
    two_speaker_recording,
    write_recordings,
)
from tests.helpers import write_recording as write


@pytest.fixture
def sharing_model(monkeypatch):
    """`separate.py --model <anything>` loads `sharing_separator`: the CLI without a model's cost."""
    monkeypatch.setattr(separate, "load_separator", lambda *args, **kwargs: sharing_separator(SAMPLE_RATE))


def test_of_two_runs_writing_the_same_tracks_at_once_one_fails_and_the_others_tracks_stay(
    sharing_model, tmp_path, monkeypatch, caplog
):
    """Run A has checked that its names are free and is writing when run B (a same-named input from another
    folder) writes the same names: A must not replace B's tracks, nor exit 0 as if it had written them."""
    for folder, seconds in (("a", 1.0), ("b", 2.0)):
        (tmp_path / folder).mkdir()
        write(tmp_path / folder / "meeting.wav", two_speaker_recording(seconds)[0].numpy())
    out = str(tmp_path / "out")
    write_track, codes = files._write_track, {}

    def write_while_run_b_runs(*args, **kwargs):
        if "b" not in codes:
            codes["b"] = None  # run B's own writes go through
            codes["b"] = separate.main(
                ["--model", "m", "--output-dir", out, "--keep-all-tracks", str(tmp_path / "b" / "meeting.wav")]
            )
        write_track(*args, **kwargs)

    monkeypatch.setattr(files, "_write_track", write_while_run_b_runs)
    codes["a"] = separate.main(
        ["--model", "m", "--output-dir", out, "--keep-all-tracks", str(tmp_path / "a" / "meeting.wav")]
    )

    assert codes == {"b": 0, "a": 1}
    assert error_lines(caplog) == [
        f"error: {tmp_path / 'a' / 'meeting.wav'}: {tmp_path / 'out' / 'meeting_s1.wav'} exists; pass --overwrite "
        "to replace it, or choose another output folder"
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meeting_s1.wav", "meeting_s2.wav"]
    assert all(sf.info(tmp_path / "out" / f"meeting_s{k}.wav").frames == 2 * SAMPLE_RATE for k in (1, 2))


def separate_with_speakers(monkeypatch, num_spks: int, *arguments: str) -> int:
    """`separate.py` with a `sharing_separator` of `num_spks` speakers, writing every track (its tracks are copies
    of one another: counted, they would be one talker's)."""
    model = sharing_separator(SAMPLE_RATE, num_spks)
    monkeypatch.setattr(separate, "load_separator", lambda *args, **kwargs: model)
    return separate.main(["--model", "m", "--keep-all-tracks", *arguments])


def test_overwrite_by_a_model_with_fewer_speakers_removes_the_earlier_extra_tracks(
    recordings, tmp_path, monkeypatch, caplog
):
    out, talk = tmp_path / "out", str(recordings / "talk0.wav")
    assert separate_with_speakers(monkeypatch, 3, "--output-dir", str(out), talk) == 0
    write(out / "talk0_s4.wav", np.zeros(100))  # a file of the user's, named like a track: not separate.py's

    assert separate_with_speakers(monkeypatch, 2, "--output-dir", str(out), talk) == 1  # x_s1 exists: refused
    assert sorted(p.name for p in out.iterdir()) == ["talk0_s1.wav", "talk0_s2.wav", "talk0_s3.wav", "talk0_s4.wav"]

    assert separate_with_speakers(monkeypatch, 2, "--output-dir", str(out), "--overwrite", talk) == 0
    assert sorted(p.name for p in out.iterdir()) == ["talk0_s1.wav", "talk0_s2.wav", "talk0_s4.wav"]
    assert "talk0.wav: removed talk0_s3.wav, tracks of an earlier run with more tracks" in caplog.text


@pytest.mark.parametrize("output_dir", ["in/separated", "in"])
def test_a_rerun_does_not_separate_the_tracks_of_the_last_run(sharing_model, recordings, tmp_path, output_dir):
    """--output-dir inside the folder of inputs (or that folder itself): a rerun separates the same inputs."""
    arguments = ["--model", "m", "--output-dir", str(tmp_path / output_dir), "--overwrite", "--keep-all-tracks"]
    arguments.append(str(recordings))
    assert separate.main(arguments) == 0
    written = sorted(recordings.rglob("*"))
    assert len([path for path in written if path.is_file()]) == 2 + 4
    assert separate.main(arguments) == 0
    assert sorted(recordings.rglob("*")) == written


def test_a_track_over_a_file_size_limit_is_one_error_and_leaves_nothing(sharing_model, recordings, tmp_path):
    """separate.py with files limited to 20 kB (as a full disk): no truncated track that a rerun would refuse
    to replace."""
    script = (
        "import sys, separate; from tests.helpers import sharing_separator; "
        "separate.load_separator = lambda *args, **kwargs: sharing_separator(); sys.exit(separate.main())"
    )
    arguments = ["--model", "m", "--output-dir", str(tmp_path / "out"), str(recordings / "talk0.wav")]

    result = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size(20000),
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot write {tmp_path / 'out' / 'talk0_s1.wav'}" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "out").iterdir()) == []
    assert separate.main(arguments) == 0  # nothing half-written is in the way


def oracle_file_separator(mixture, sources, **options) -> FileSeparator:
    """A FileSeparator around the oracle, with the attributes of SpeechBrain's separator it uses."""
    oracle = OracleSeparator(mixture, sources)
    hparams = SimpleNamespace(sample_rate=SAMPLE_RATE, num_spks=2)
    stand_in = SimpleNamespace(separate_batch=oracle.separate_batch, hparams=hparams)
    return FileSeparator(stand_in, SeparationOptions(**{"window": 2.0, "hop": 1.0, "progress": False, **options}))


def test_estimates_louder_than_full_scale_are_scaled_down_not_clipped(tmp_path):
    t = torch.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    tone, other_tone = torch.sin(2 * torch.pi * 200 * t), torch.sin(2 * torch.pi * 330 * t)
    sources = torch.stack([1.5 * tone, -1.2 * tone + 0.2 * other_tone], dim=1)
    mixture = sources.sum(dim=1)  # peaks below 0.5: the sources partly cancel
    write(tmp_path / "loud.wav", mixture.numpy())
    separator = oracle_file_separator(mixture, sources, keep_all_tracks=True)  # two tracks of one pitch: one talker
    result = separator.separate_file(tmp_path / "loud.wav", tmp_path / "out")

    tracks = [sf.read(path)[0] for path in result.outputs]
    peaks = sorted(np.abs(track).max() for track in tracks)
    assert peaks[1] == pytest.approx(1.0, abs=1e-3)
    assert peaks[0] / peaks[1] == pytest.approx(float(sources[:, 1].abs().max() / sources[:, 0].abs().max()), abs=0.01)


def test_peak_normalisation_brings_every_track_to_0_9(tmp_path):
    mixture, sources = two_speaker_recording(3.0)
    write(tmp_path / "talk.wav", mixture.numpy())
    separator = oracle_file_separator(mixture, sources, normalize="peak")
    result = separator.separate_file(tmp_path / "talk.wav", tmp_path / "out")
    for path in result.outputs:
        assert np.abs(sf.read(path)[0]).max() == pytest.approx(0.9, abs=1e-3)


def test_window_and_hop_are_counted_in_samples_at_the_models_rate():
    silence = torch.zeros(SAMPLE_RATE)
    separator = oracle_file_separator(silence, silence[:, None].expand(-1, 2), window=1.0, hop=0.8)
    assert (separator.window, separator.hop) == (8000, 6400)


@pytest.fixture
def recordings(tmp_path) -> Path:
    return write_recordings(tmp_path / "in")


def test_inputs_may_be_files_folders_or_globs(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.wav", "a/deep/y.flac", "z.ogg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    files, errors = expand_inputs([f"{tmp_path}/a", f"{tmp_path}/*.ogg", f"{tmp_path}/a/x.wav", f"{tmp_path}/*.mp4"])
    assert files == [tmp_path / "a" / "deep" / "y.flac", tmp_path / "a" / "x.wav", tmp_path / "z.ogg"]
    assert errors == [f"{tmp_path}/*.mp4: matches no file"]


def test_a_folder_or_glob_of_earlier_tracks_alone_says_they_were_skipped_and_how_to_separate_one(
    sharing_model, recordings, tmp_path, caplog
):
    out = tmp_path / "out"
    assert (
        separate.main(["--model", "m", "--output-dir", str(out), "--keep-all-tracks", str(recordings / "talk0.wav")])
        == 0
    )
    assert separate.main(["--model", "m", "--output-dir", str(tmp_path / "again"), str(out), f"{out}/*.wav"]) == 1
    assert error_lines(caplog) == [
        f"error: {name}: nothing to separate: 2 files are tracks that separate.py wrote earlier, skipped; to "
        "separate one, name the file itself"
        for name in (out, f"{out}/*.wav")
    ]


def test_a_folder_holding_inputs_and_earlier_tracks_says_how_many_tracks_were_skipped(
    sharing_model, recordings, tmp_path, caplog
):
    assert (
        separate.main(
            ["--model", "m", "--output-dir", str(recordings), "--keep-all-tracks", str(recordings / "talk0.wav")]
        )
        == 0
    )
    assert (
        separate.main(["--model", "m", "--output-dir", str(tmp_path / "out"), "--keep-all-tracks", str(recordings)])
        == 0
    )
    assert f"{recordings}: 2 files are tracks that separate.py wrote earlier, skipped" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"talk{k}_s{s}.wav" for k in (0, 1) for s in (1, 2)]
