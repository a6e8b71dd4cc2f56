"""A run's records say what they describe: overrides kept whole, one experiment per output folder, test results
naming the checkpoint and test set they scored, model folders and cards that match their model, one corpus
generation per folder."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import speechbrain as sb

import export
import train
from demo.corpus.options import corpus_root
from demo.corpus.synth_corpus import CorpusInUseError, synthesize_corpus
from speechsep.errors import RecipeError
from speechsep.evaluation import metrics
from speechsep.inference.model_folder import ModelFolderError, check_format, export_model, find_model, load_separator
from speechsep.locking import acquire, release
from speechsep.output_files import OutputError
from speechsep.training.checkpoints import CheckpointWriteError
from speechsep.training.config import ConfigError, parse_arguments, record_yaml, resolved_values
from speechsep.training.run_folders import check_record_is_of_this_run, check_results_folder
from speechsep.training.run_lock import LOCK_FILE, FolderInUseError, release_output_folder
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, limit_file_size, make_batch, make_brain, train_command
from tests.published_models import write_published_folder

CONFIG = REPO / "hparams" / "convtasnet.yaml"


def command_line_values(*overrides: str) -> dict:
    """The resolved config train.py would run with these command-line overrides."""
    _, _, text = parse_arguments([str(CONFIG), *overrides])
    return resolved_values(record_yaml(CONFIG, text))


# ---------------------------------------------------------------- overrides and paths
def test_a_hash_or_equals_sign_in_an_override_is_part_of_the_value():
    values = command_line_values("--output_folder=/tmp/runs/a #2", "--data_folder", "/data/set=1 #3", "--lr=0.01")
    assert values["output_folder"] == "/tmp/runs/a #2"
    assert values["save_folder"] == "/tmp/runs/a #2/save"
    assert values["data_folder"] == "/data/set=1 #3"
    assert values["lr"] == 0.01  # other values are still YAML


@pytest.mark.parametrize(
    "override, message",
    [
        ("--output_folder=''", "output_folder is ''"),
        ("--output_folder=null", "output_folder is None"),
        ("--save_folder=[a, b]", "save_folder is ['a', 'b']"),
        ("--results_folder=''", "results_folder is ''"),
        ("--train_log=", "train_log is None"),
        ("--test_data=null", "test_data is None"),
        ("--test_data=", "test_data is None"),
        ("--valid_data=[1,2]", "valid_data is [1, 2]"),
        ("--train_data={a: 1}", "train_data is {'a': 1}"),
        ("--data_folder=''", "data_folder is ''"),
        ("--base_folder_dm=[a]", "base_folder_dm is ['a']"),
        ("--noise_folder_dm=''", "noise_folder_dm is ''"),
        ("--pretrained_separator=[a]", "pretrained_separator is ['a']"),
    ],
)
def test_an_unusable_path_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(tmp_path)
    folders = {"data_folder": tmp_path, "output_folder": tmp_path / "run"}
    given = [f"--{key}={value}" for key, value in folders.items() if not override.startswith(f"--{key}=")]
    argv = [str(CONFIG), *given, override]
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}; expected (null or )?a path"):
        train.prepare_experiment(argv)
    assert not list(tmp_path.rglob(LOCK_FILE))


def test_a_save_folder_that_cannot_be_created_is_one_line_before_anything_is_built(tmp_path):
    (tmp_path / "a_file").write_text("")
    values = command_line_values(
        f"--data_folder={tmp_path}", f"--output_folder={tmp_path / 'run'}", f"--save_folder={tmp_path / 'a_file'}"
    )
    with pytest.raises(RecipeError, match=f"^save_folder {tmp_path / 'a_file'} cannot be written: File exists$"):
        train.check_inputs(values, test_only=False)


def test_a_config_key_left_to_the_command_line_and_not_given_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="^data_folder is not set .*: pass --data_folder="):
        train.prepare_experiment([str(CONFIG), f"--output_folder={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- one experiment per output folder
TINY = [f"--{key}={value}" for key, value in TINY_CONVTASNET.items()]


def fake_run(folder: Path, *overrides: str) -> dict:
    """A tiny run's folder as train.py leaves one (its record and a checkpoint folder); returns its values."""
    text = parse_arguments([str(CONFIG), f"--output_folder={folder}", "--data_folder=/data", *TINY, *overrides])[2]
    record = record_yaml(CONFIG, text)
    (folder / "save" / "CKPT+1").mkdir(parents=True)
    (folder / "hyperparams.yaml").write_text(record)
    return resolved_values(record)


def rerun(folder: Path, *overrides: str, test_only=False) -> None:
    argv = [str(CONFIG), f"--output_folder={folder}", "--data_folder=/data", *TINY, *overrides]
    record = record_yaml(CONFIG, parse_arguments(argv)[2])
    train.check_same_experiment(resolved_values(record), record, test_only)


WITH_DYNAMIC_MIXING = ("--dynamic_mixing=True",)


@pytest.mark.parametrize(
    "key, value, run_options",
    [
        ("train_data", "/other/train.csv", ()),
        ("valid_data", "/other/valid.csv", ()),
        ("test_data", "/other/test.csv", ()),
        ("dynamic_mixing", True, ()),
        ("base_folder_dm", "/other/pool", WITH_DYNAMIC_MIXING),
        ("noise_folder_dm", "/other/noise", WITH_DYNAMIC_MIXING),
    ],
)
def test_resuming_with_other_manifests_or_dynamic_mixing_is_refused(tmp_path, key, value, run_options):
    run = tmp_path / "run"
    recorded = fake_run(run, *run_options)
    with pytest.raises(ConfigError, match="holds a run with another model or data") as refused:
        rerun(run, *run_options, f"--{key}={value}")
    assert f"{key}: {recorded[key]} -> {value}" in str(refused.value)
    rerun(run, *run_options, f"--{key}={value}", test_only=True)  # scoring other data is allowed


@pytest.mark.parametrize(
    "key, value, run_options",
    [("base_folder_dm", "/pool", ()), ("noise_folder_dm", "/noise", ()), ("train_data", "/x.csv", WITH_DYNAMIC_MIXING)],
)
def test_resuming_with_another_value_of_a_data_key_the_run_does_not_read_is_allowed(tmp_path, key, value, run_options):
    fake_run(tmp_path / "run", *run_options, f"--{key}={value}")
    rerun(tmp_path / "run", *run_options)


def test_a_copied_run_resumes_with_its_own_manifests(tmp_path):
    fake_run(tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    rerun(tmp_path / "copy")  # its manifests are copy/save/*.csv, the record's run/save/*.csv: the same run


# ---------------------------------------------------------------- which run a command writes to
def test_the_record_of_a_copied_run_is_refused_without_an_explicit_output_folder(tmp_path):
    fake_run(tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    record = tmp_path / "copy" / "hyperparams.yaml"
    message = f"{record} is in the run folder {tmp_path / 'copy'}, but its output_folder is {tmp_path / 'run'} "
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}.*pass --output_folder={tmp_path / 'copy'}$"):
        train.prepare_experiment([str(record), "--test_only"])
    assert not (tmp_path / "run" / LOCK_FILE).exists()

    values = resolved_values(record.read_text())
    check_record_is_of_this_run(record, {**values, "output_folder": str(tmp_path / "copy")}, {"output_folder"})
    check_record_is_of_this_run(tmp_path / "run" / "hyperparams.yaml", values, set())  # the run's own record


@pytest.mark.parametrize("inside", ["", "eval"])
def test_a_results_folder_in_another_runs_folder_is_refused(tmp_path, inside):
    fake_run(tmp_path / "other")
    argv = [str(CONFIG), f"--data_folder={tmp_path}", f"--output_folder={tmp_path / 'run'}", "--test_only"]
    with pytest.raises(ConfigError, match="the output folder of another run .*: choose a results_folder of this"):
        train.prepare_experiment([*argv, f"--results_folder={tmp_path / 'other' / inside}"])
    assert not (tmp_path / "run").exists()
    check_results_folder({"output_folder": str(tmp_path / "other"), "results_folder": str(tmp_path / "other" / "a")})


def test_a_results_folder_outside_the_output_folder_is_locked_like_it(tmp_path):
    (tmp_path / "results").mkdir()
    holder = acquire(tmp_path / "results" / LOCK_FILE)  # another run writing its results there
    argv = [str(CONFIG), f"--data_folder={tmp_path}", f"--output_folder={tmp_path / 'run'}"]
    try:
        with pytest.raises(FolderInUseError, match=f"^results_folder {tmp_path / 'results'} is in use by process"):
            train.prepare_experiment([*argv, f"--results_folder={tmp_path / 'results'}", "--test_only"])
    finally:
        release(holder)
        release_output_folder(tmp_path / "run")


# ---------------------------------------------------------------- test results say what they scored
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


# ---------------------------------------------------------------- the training log
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


# ---------------------------------------------------------------- model folders and their cards
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


# ---------------------------------------------------------------- one corpus generation per folder
def test_a_second_corpus_generation_into_the_same_folder_refuses_and_leaves_the_first_alone(tmp_path):
    root = corpus_root(tmp_path, 2)
    root.mkdir(parents=True)
    (root / "synth_corpus.json").write_text('{"complete": false}')  # the first, mid-generation
    lock = acquire(tmp_path / f".{root.name}.lock")
    try:
        with pytest.raises(CorpusInUseError, match=f"{root} is being generated by process .*: wait for it to end"):
            synthesize_corpus(tmp_path, num_train=1, num_dev=1, num_test=1, num_workers=1)
    finally:
        release(lock)
    assert (root / "synth_corpus.json").read_text() == '{"complete": false}'


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
