"""Model folders and export.py: the best checkpoint, what an export holds, exports of exports, unreadable checkpoints."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import export
import separate
from speechsep.inference.model_folder import ModelFolderError, find_model, load_separator
from tests.helpers import (
    REPO,
    error_lines,
)


def test_run_folder_uses_the_checkpoint_with_the_best_si_snr(sepformer_run):
    assert find_model(sepformer_run).weights_dir.name == "CKPT+best"


def test_export_holds_only_the_model(sepformer_run, tmp_path):
    export.main([str(sepformer_run), str(tmp_path / "export")])
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "README.md",
        "decoder.ckpt",
        "encoder.ckpt",
        "hyperparams.yaml",
        "masknet.ckpt",
    ]
    config = (tmp_path / "export" / "hyperparams.yaml").read_text()
    for absent in (str(sepformer_run), "data_folder", "optimizer", "checkpointer", "speechsep", "huggingface"):
        assert absent not in config
    assert "SBTransformerBlock" in config


@pytest.fixture
def sepformer_run_copy(sepformer_run, tmp_path) -> Path:
    """A copy of the SepFormer run whose checkpoints a test may damage (the config names no path of the run's
    that a model needs)."""
    copy = tmp_path / "run"
    shutil.copytree(sepformer_run, copy)
    return copy


def test_an_export_of_an_export_keeps_the_training_and_test_scores_of_the_first_card(
    sepformer_run, sepformer_run_copy, tmp_path
):
    config = sepformer_run_copy / "hyperparams.yaml"
    config.write_text(config.read_text().replace(str(sepformer_run), str(sepformer_run_copy)))  # its own results
    summary = {"si-snr_i": {"mean": 12.34, "ci95_low": 11.0, "ci95_high": 13.5, "count": 7}}
    (sepformer_run_copy / "test_results_summary.json").write_text(json.dumps(summary))
    assert export.main([str(sepformer_run_copy), str(tmp_path / "first")]) == 0
    assert export.main([str(tmp_path / "first"), str(tmp_path / "second")]) == 0

    card = (tmp_path / "second" / "README.md").read_text()
    assert (
        "from first (an export of run, training checkpoint CKPT+best); the training and test scores below are" in card
    )
    assert "`experiment_name`: sepformer-wsj0mix" in card and "Unknown" not in card
    assert "7 mixtures" in card and "| SI-SNRi | 12.34 | 11.00 .. 13.50 |" in card


@pytest.mark.parametrize("damage", [b"", b"\x00\xff garbled: [", b"just text"])
def test_a_checkpoint_with_an_unreadable_meta_file_is_skipped_with_a_warning(sepformer_run_copy, caplog, damage):
    (sepformer_run_copy / "save" / "CKPT+best" / "CKPT.yaml").write_bytes(damage)
    assert find_model(sepformer_run_copy).weights_dir.name == "CKPT+latest"
    assert f"Skipping checkpoint {sepformer_run_copy / 'save' / 'CKPT+best'}: unreadable CKPT.yaml" in caplog.text


def test_a_run_whose_every_checkpoint_is_unreadable_is_one_line_for_separate_and_export(
    sepformer_run_copy, tmp_path, caplog
):
    for meta_file in (sepformer_run_copy / "save").glob("CKPT+*/CKPT.yaml"):
        meta_file.write_text("")
    message = f"error: {sepformer_run_copy / 'save'} has no checkpoint with a 'si-snr' meta"
    assert separate.main(["--model", str(sepformer_run_copy), "--output-dir", str(tmp_path / "out"), "x.wav"]) == 2
    assert export.main([str(sepformer_run_copy), str(tmp_path / "export")]) == 2
    errors = error_lines(caplog)
    assert len(errors) == 2 and all(error.startswith(message) for error in errors)


def test_missing_model_folder_fails_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "separate.py", "--model", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path), "x.wav"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: model folder not found: {tmp_path / 'nowhere'}"]


def test_folder_without_checkpoint_or_weights_is_not_a_model(tmp_path):
    (tmp_path / "hyperparams.yaml").write_text("num_spks: 2\nsample_rate: 8000\n")
    with pytest.raises(ModelFolderError, match="declares no encoder, masknet, decoder module"):
        load_separator(tmp_path)
