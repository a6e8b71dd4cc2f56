"""The demo driver (`python -m demo`): what it reports, the time it gives training, where it must run."""

from pathlib import Path

import pytest

from demo.run import DEMO_MINUTES, MIN_TRAIN_MINUTES, STARTUP_AND_TEST_MINUTES, main, summary_line, training_budget


def test_demo_reports_the_single_pass_first_then_test_time_options_then_recorded_voices():
    summary = {
        "si-snr_i": 7.1, "si-snr_i_with_test_options": 7.6, "sdr_i": 7.9, "test_mixtures": 150,
        "si-snr_i_by_gender_pairing": {"different_genders": {"mean": 9.0}, "same_gender": {"mean": 5.0}},
        "recorded_speech": {"si-snr_i": 3.2, "mixtures": 100, "folder": "x"},
        "corpus_seconds": 60.0, "train_and_test_seconds": 720.0, "test_results": "r.csv",
    }  # fmt: skip
    line = summary_line(summary, Path("results/demo"))
    assert line.index("7.10 dB single pass") < line.index("7.60 dB with the test-time options")
    assert line.index("7.60 dB with the test-time options") < line.index("3.20 dB on 100 mixtures of recorded voices")


def test_demo_training_gets_what_the_corpus_left_of_the_demos_time():
    assert training_budget(60.0, []) == [f"--train_budget_minutes={DEMO_MINUTES - 1 - STARTUP_AND_TEST_MINUTES:.2f}"]
    assert training_budget(60.0 * DEMO_MINUTES, []) == [f"--train_budget_minutes={MIN_TRAIN_MINUTES:.2f}"]
    assert training_budget(60.0, ["--train_budget_minutes=3"]) == []  # the user's own budget stands


def test_demo_outside_the_repository_root_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^error: no train.py in .*run the demo from the repository root"):
        main(["--data-dir", str(tmp_path / "data")])
    assert not (tmp_path / "data").exists()  # refused before synthesising anything
