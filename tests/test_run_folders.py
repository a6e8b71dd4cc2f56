"""A run's output folder: overrides kept whole, one experiment per folder, which run a command writes to, one corpus generation."""

import re
import shutil
from pathlib import Path

import pytest

import train
from demo.corpus.options import corpus_root
from demo.corpus.synth_corpus import CorpusInUseError, synthesize_corpus
from speechsep.errors import RecipeError
from speechsep.locking import acquire, release
from speechsep.training.config import ConfigError, parse_arguments, record_yaml, resolved_values
from speechsep.training.preflight import check_inputs, check_same_experiment
from speechsep.training.run_folders import check_record_is_of_this_run, check_results_folder
from speechsep.training.run_lock import LOCK_FILE, FolderInUseError, release_output_folder
from tests.helpers import REPO, TINY_CONVTASNET, fake_run

CONFIG = REPO / "hparams" / "convtasnet.yaml"


def command_line_values(*overrides: str) -> dict:
    """The resolved config train.py would run with these command-line overrides."""
    _, _, text = parse_arguments([str(CONFIG), *overrides])
    return resolved_values(record_yaml(CONFIG, text))


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
        check_inputs(values, test_only=False)


def test_a_config_key_left_to_the_command_line_and_not_given_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="^data_folder is not set .*: pass --data_folder="):
        train.prepare_experiment([str(CONFIG), f"--output_folder={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


TINY = [f"--{key}={value}" for key, value in TINY_CONVTASNET.items()]


def rerun(folder: Path, *overrides: str, test_only=False) -> None:
    argv = [str(CONFIG), f"--output_folder={folder}", "--data_folder=/data", *TINY, *overrides]
    record = record_yaml(CONFIG, parse_arguments(argv)[2])
    check_same_experiment(resolved_values(record), record, test_only)


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
