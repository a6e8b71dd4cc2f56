"""Test results say what they scored (checkpoint, epoch, test set) and never lose the last whole ones; the training log."""

import json
import subprocess

import pytest
import speechbrain as sb

from speechsep.evaluation import metrics
from speechsep.output_files import OutputError
from speechsep.training.checkpoints import CheckpointWriteError
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, limit_file_size, make_batch, make_brain, train_command

OLD_RESULTS = ("test_results.csv", "test_results_summary.json", "test_hyperparams.yaml", "audio/old_source2hat.wav")


def brain_with_old_results(tmp_path):
    """A tiny brain with one checkpoint at epoch 3, and results of an earlier test stage in its results folder."""
    brain = make_brain(tmp_path, checkpointer=True, save_audio=True, n_audio_to_save=1)
    brain.hparams.epoch_counter.current = 3
    checkpoint = brain.checkpointer.save_checkpoint(meta={"si-snr": 1.0})
    results = tmp_path / "out"
    for name in (*OLD_RESULTS, "audio/mine.wav"):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text("from an earlier checkpoint")
    return brain, checkpoint


def run_test_stage(brain):
    brain.on_stage_start(sb.Stage.TEST)
    loss = brain.evaluate_batch(make_batch(batch_size=2), sb.Stage.TEST)
    brain.on_stage_end(sb.Stage.TEST, loss)


def moved_aside(tmp_path) -> list[str]:
    """The earlier results that wait in previous_test/."""
    return [name for name in OLD_RESULTS if (tmp_path / "out" / "previous_test" / name).is_file()]


def test_a_test_stage_that_starts_moves_an_earlier_ones_results_aside(tmp_path):
    brain, _ = brain_with_old_results(tmp_path)
    brain.on_evaluate_start(max_key="si-snr")  # then killed: no result of another checkpoint looks current
    assert [name for name in OLD_RESULTS if (tmp_path / "out" / name).exists()] == []
    assert moved_aside(tmp_path) == list(OLD_RESULTS)
    assert (tmp_path / "out" / "audio" / "mine.wav").exists()  # not an audio example: the user's


def test_the_earlier_results_are_removed_once_the_new_ones_are_written(tmp_path):
    brain, _ = brain_with_old_results(tmp_path)
    brain.on_evaluate_start(max_key="si-snr")
    run_test_stage(brain)
    assert not (tmp_path / "out" / "previous_test").exists()
    assert "from an earlier" not in (tmp_path / "out" / "test_results.csv").read_text()


def test_a_test_stage_that_fails_leaves_the_earlier_results_set_aside(tmp_path, monkeypatch):
    brain, _ = brain_with_old_results(tmp_path)
    brain.on_evaluate_start(max_key="si-snr")

    def full_disk(rows, csv_path, scored=None):
        raise OutputError(f"cannot write {csv_path}: No space left on device")

    monkeypatch.setattr(metrics, "write_test_results", full_disk)
    with pytest.raises(OutputError):
        run_test_stage(brain)
    assert moved_aside(tmp_path) == list(OLD_RESULTS)


def test_a_test_stage_after_one_that_did_not_finish_keeps_the_last_whole_results(tmp_path):
    brain, _ = brain_with_old_results(tmp_path)
    brain.on_evaluate_start(max_key="si-snr")
    brain.on_stage_start(sb.Stage.TEST)
    brain.evaluate_batch(make_batch(batch_size=2), sb.Stage.TEST)  # audio written, then killed before the results
    brain.on_evaluate_start(max_key="si-snr")
    assert moved_aside(tmp_path) == list(OLD_RESULTS)
    assert not list((tmp_path / "out" / "audio").glob("utt*.wav"))  # the unfinished stage's audio is no result

    run_test_stage(brain)
    brain.on_evaluate_start(max_key="si-snr")  # whole results of its own: they replace the older ones
    assert moved_aside(tmp_path) == ["test_results.csv", "test_results_summary.json"]
    assert "from an earlier" not in (tmp_path / "out" / "previous_test" / "test_results.csv").read_text()


def test_test_results_and_their_log_line_name_the_checkpoint_epoch_and_test_set(tmp_path):
    brain, checkpoint = brain_with_old_results(tmp_path)
    brain.hparams.epoch_counter.current = 5  # what recovery replaces with the checkpoint's epoch
    brain.on_evaluate_start(max_key="si-snr")
    run_test_stage(brain)

    test_set = {"data_folder": str(tmp_path / "data"), "test_data": str(tmp_path / "out" / "save" / "test.csv")}
    summary = json.loads((tmp_path / "out" / "test_results_summary.json").read_text())
    assert summary["scored"] == {"epoch": 3, "checkpoint": checkpoint.path.name, **test_set, "precision": "fp32"}
    log_line = (tmp_path / "out" / "train_log.txt").read_text().splitlines()[-1]
    label = f"epoch loaded: 3, checkpoint: {checkpoint.path.name}, data_folder: {tmp_path / 'data'}, test_data: "
    assert log_line.startswith(f"{label}{test_set['test_data']}, precision: fp32 - test")


def test_test_only_writes_its_config_with_its_results_only(tmp_path):
    brain, _ = brain_with_old_results(tmp_path)
    brain.test_only, brain.hparams.test_record = True, "test_data: mine.csv\n"
    brain.on_evaluate_start(max_key="si-snr")
    assert not (tmp_path / "out" / "test_hyperparams.yaml").exists()
    run_test_stage(brain)
    assert (tmp_path / "out" / "test_hyperparams.yaml").read_text() == "test_data: mine.csv\n"


@pytest.mark.slow
def test_a_test_only_that_fails_leaves_no_test_config(tmp_path):
    data_folder = make_wsj0mix(tmp_path / "data", per_split=1)
    command = train_command(
        "convtasnet.yaml", data_folder, tmp_path / "run", "--test_only", "--skip_prep=True",
        f"--test_data={tmp_path / 'missing.csv'}", f"--results_folder={tmp_path / 'eval'}", **TINY_CONVTASNET,
    )  # fmt: skip
    result = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode != 0
    assert "missing.csv" in result.stdout.strip().splitlines()[-1]
    assert not (tmp_path / "eval" / "test_hyperparams.yaml").exists()


@pytest.mark.slow
def test_a_test_only_that_cannot_write_its_results_says_where_the_earlier_ones_are(tmp_path):
    brain_with_old_results(tmp_path)  # a run in tmp_path/out with a checkpoint and earlier results
    data_folder = make_wsj0mix(tmp_path / "tree", per_split=1, seconds=4.0, length_spread=0)
    command = train_command("convtasnet.yaml", data_folder, tmp_path / "out", "--test_only", **TINY_CONVTASNET)
    result = subprocess.run(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        preexec_fn=limit_file_size(60_000),  # the run's files fit, a 4-second audio example does not
    )  # fmt: skip
    assert result.returncode != 0
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line.startswith(f"error: cannot write {tmp_path / 'out' / 'audio'}"), result.stdout[-2000:]
    assert last_line.endswith(f"; the earlier test results are kept in {tmp_path / 'out' / 'previous_test'}")
    assert moved_aside(tmp_path) == list(OLD_RESULTS)
    assert not (tmp_path / "out" / "test_results.csv").exists()


def test_an_epoch_is_logged_only_once_its_checkpoint_is_saved(tmp_path, monkeypatch):
    brain = make_brain(tmp_path, checkpointer=True)
    brain.on_stage_end(sb.Stage.TRAIN, 1.0, epoch=2)
    brain.on_stage_start(sb.Stage.VALID, 2)
    brain.evaluate_batch(make_batch(batch_size=2), sb.Stage.VALID)

    def full_disk(*args, **kwargs):
        raise CheckpointWriteError(28, "No space left on device", str(tmp_path / "out" / "save" / "CKPT+x"))

    monkeypatch.setattr(brain.checkpointer, "save_and_keep_only", full_disk)
    with pytest.raises(CheckpointWriteError):
        brain.on_stage_end(sb.Stage.VALID, 1.0, epoch=2)
    log = tmp_path / "out" / "train_log.txt"
    assert "epoch: 2" not in (log.read_text() if log.exists() else "")  # the rerun trains and logs it once
