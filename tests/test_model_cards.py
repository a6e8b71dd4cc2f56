"""Model folders and cards match their model: num_spks checks, and the scores of the exported checkpoint only."""

import shutil
from pathlib import Path

import pytest

import export
from speechsep.evaluation import metrics
from speechsep.inference.model_folder import ModelFolderError, check_format, export_model, find_model, load_separator
from tests.helpers import fake_run, make_brain
from tests.published_models import write_published_folder


def folder_declaring_num_spks(folder: Path, num_spks: int) -> Path:
    """A published-layout Conv-TasNet folder whose mask network makes 2 masks but whose config says `num_spks`."""
    folder = write_published_folder(folder, "convtasnet")
    config = (folder / "hyperparams.yaml").read_text()
    (folder / "hyperparams.yaml").write_text(
        config.replace("C: !ref <num_spks>", "C: 2").replace("num_spks: 2", f"num_spks: {num_spks}")
    )
    return folder


def test_a_folder_whose_num_spks_disagrees_with_its_mask_network_is_refused_and_not_exported(tmp_path):
    folder = folder_declaring_num_spks(tmp_path / "model", 1)
    message = "hyperparams.yaml says num_spks: 1, but its mask network makes 2 masks: set num_spks: 2"
    with pytest.raises(ModelFolderError, match=message):
        load_separator(folder)
    assert export.main([str(folder), str(tmp_path / "export")]) != 0
    assert not (tmp_path / "export").exists()


def test_a_folder_inconsistent_in_itself_is_reported_before_its_mismatch_with_the_run(tmp_path):
    folder = folder_declaring_num_spks(tmp_path / "model", 3)
    message = "hyperparams.yaml says num_spks: 3, but its mask network makes 2 masks: set num_spks: 2"
    with pytest.raises(ModelFolderError, match=message):
        check_format(find_model(folder), num_spks=2, sample_rate=8000)


SCORE_ROWS = [{"snt_id": "a", "si-snr_i": 7.0, "sdr_i": 7.5}, {"snt_id": "b", "si-snr_i": 9.0, "sdr_i": 9.5}]


def run_with_results(run: Path, scored_checkpoint: str | None = None) -> str:
    """A tiny run folder with one checkpoint and test results (SI-SNRi 8.00) that name the checkpoint they scored,
    by default that one; returns its name."""
    fake_run(run)
    shutil.rmtree(run / "save" / "CKPT+1")
    checkpoint = make_brain(run.parent / "model", checkpointer=True).checkpointer.save_checkpoint(meta={"si-snr": 1})
    shutil.copytree(checkpoint.path, run / "save" / checkpoint.path.name)
    scored = {"epoch": 4, "checkpoint": scored_checkpoint or checkpoint.path.name}
    scored.update(data_folder="/data/tree", test_data="/data/x/test.csv")
    metrics.write_test_results(SCORE_ROWS, run / "test_results.csv", scored=scored)
    return checkpoint.path.name


def exported_card(model_dir: Path, export_dir: Path) -> str:
    export_model(model_dir, export_dir)
    return (export_dir / "README.md").read_text()


def test_the_model_card_shows_the_exported_folders_own_scores_and_no_path_of_the_machine(tmp_path):
    run_with_results(tmp_path / "machine" / "run")
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "machine" / "run", copy)
    metrics.write_test_results(
        [{**row, "si-snr_i": row["si-snr_i"] + 4} for row in SCORE_ROWS], copy / "test_results.csv"
    )

    card = exported_card(copy, tmp_path / "export")

    assert "| SI-SNRi | 12.00 |" in card  # the copy's own scores, not the original run's 8.00
    assert "`data_folder`: data" in card
    assert str(tmp_path) not in card and "/data" not in card


def test_the_model_card_names_the_scored_checkpoint_and_shows_no_scores_of_another(tmp_path):
    checkpoint = run_with_results(tmp_path / "run")
    card = exported_card(tmp_path / "run", tmp_path / "export")
    assert "| SI-SNRi | 8.00 |" in card and "On the test set `test.csv` (from `tree`)" in card
    assert f"Scored checkpoint: {checkpoint} (epoch 4)." in card

    checkpoint = run_with_results(tmp_path / "other", scored_checkpoint="CKPT+older")
    card = exported_card(tmp_path / "other", tmp_path / "other_export")
    assert "| SI-SNRi |" not in card
    assert f"None for this checkpoint: the run's test results score CKPT+older, not the exported {checkpoint}" in card
    assert "(`train.py <run>/hyperparams.yaml --output_folder=<run> --test_only` scores it)" in card  # a copy's too
