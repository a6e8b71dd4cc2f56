"""Window, hop and device options of separate.py: refused in one line before any work, with a usable proposal."""

import re
from pathlib import Path

import pytest
import torch

import separate
from speechsep.inference import files
from speechsep.inference.files import FileSeparator, SeparationOptions, SeparationOptionsError
from speechsep.inference.model_folder import load_separator
from tests.helpers import (
    SAMPLE_RATE,
    error_lines,
    write_recordings,
)
from tests.published_models import write_published_folder


@pytest.fixture
def recordings(tmp_path) -> Path:
    return write_recordings(tmp_path / "in")


@pytest.mark.parametrize("hop", [0.99999, 0.95])
def test_windows_must_overlap_enough_to_match_their_speakers(hop):
    """A hop just under the window leaves a few samples to align the speakers of consecutive windows on: they
    swap tracks. Refused in one line that proposes a hop."""
    with pytest.raises(SeparationOptionsError, match=r"overlap by .* at least 0.1 s is needed .* \(e.g. --hop 0.5\)"):
        SeparationOptions(window=1.0, hop=hop)
    SeparationOptions(window=1.0, hop=0.9)  # 0.1 s: enough


@pytest.mark.parametrize("window", [0.11, 0.123456, 0.17777, 0.19999, 0.3, 7.3, 60.0])
def test_the_hop_proposed_for_too_little_overlap_is_accepted(window):
    with pytest.raises(SeparationOptionsError) as refused:
        SeparationOptions(window=window, hop=window - 0.05)
    proposal = float(re.search(r"e\.g\. --hop ([0-9.]+)\)", str(refused.value)).group(1))
    SeparationOptions(window=window, hop=proposal)


def test_a_window_too_short_for_any_hop_says_how_long_it_must_be():
    with pytest.raises(SeparationOptionsError, match=r"\(the window must be at least 0.11 s\)"):
        SeparationOptions(window=0.105, hop=0.05)


def test_a_window_shorter_than_the_models_shortest_input_is_refused_before_any_work(tmp_path, monkeypatch):
    separator = load_separator(write_published_folder(tmp_path / "model", "convtasnet"))
    monkeypatch.setattr(files, "shortest_input", lambda encoder, masknet: 12000)  # as a deep reflect-padded TCN
    with pytest.raises(SeparationOptionsError) as error:
        FileSeparator(separator, SeparationOptions(window=1.0, hop=0.5))
    assert str(error.value) == (
        "window (1.0 s) is 8000 samples at the model's 8000 Hz, shorter than the model's shortest input "
        "(12000 samples): use --window 1.5 or more"
    )


@pytest.mark.parametrize("seconds", [{"window": float("inf")}, {"hop": float("nan")}, {"window": 1e308}])
def test_window_and_hop_must_be_finite(seconds):
    with pytest.raises(SeparationOptionsError, match="finite|too long"):
        SeparationOptions(**seconds).in_samples(SAMPLE_RATE)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--window", "1", "--hop", "0.99999"], "error: window (1.0 s) and hop (0.99999 s) overlap by 1e-05 s"),
        (["--window", "inf"], "error: window (inf s) and hop (3.5 s) must be finite numbers"),
        (["--device", "cuda"], "error: --device cuda: this machine (or this PyTorch build) has no cuda device"),
        (["--device", "nonsense"], "error: --device 'nonsense' is not a device: use cpu, cuda or cuda:N"),
        (["--device", "meta"], "error: --device meta holds no data"),
    ],
)
def test_unusable_window_hop_or_device_is_one_line_before_any_work(
    sepformer_run, recordings, tmp_path, caplog, monkeypatch, option, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "cuda" is then a machine without one
    code = separate.main(
        ["--model", str(sepformer_run), "--output-dir", str(tmp_path / "out"), *option, str(recordings)]
    )
    assert code == 2
    assert len(error_lines(caplog)) == 1 and error_lines(caplog)[0].startswith(message)
    assert not (tmp_path / "out").exists()
