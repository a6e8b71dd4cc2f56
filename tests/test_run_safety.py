"""A run never loses a user's files or another run, and never reports an untrained or wrong model as a result."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from speechsep.errors import RecipeError
from speechsep.training import experiment
from speechsep.training.config import load_hparams, resolved_values
from speechsep.training.preflight import TEST_ONLY_MANIFESTS
from speechsep.training.run_lock import LOCK_FILE, claim_output_folder, release_output_folder
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, train_command

pytestmark = pytest.mark.slow


def convtasnet_command(output_folder: Path, data_folder: Path, *extra: str, **values):
    options = {"N_epochs": 2, "batch_size": 2, "save_audio": False, **TINY_CONVTASNET, **values}
    return train_command("convtasnet.yaml", data_folder, output_folder, *extra, **options)


def run_train(output_folder, data_folder, *extra, **values) -> subprocess.CompletedProcess:
    command = convtasnet_command(output_folder, data_folder, *extra, **values)
    return subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stdout.strip().splitlines()[-1]


MANIFEST_FILES = ("train.csv", "valid.csv", "test.csv", "prepare_options.json")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes (but the lock's owner record), to show that a refused command
    changed nothing."""
    files = (path for path in sorted(folder.rglob("*")) if path.is_file() and path.name != LOCK_FILE)
    return {str(path.relative_to(folder)): path.read_bytes() for path in files}


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory) -> Path:
    return make_wsj0mix(tmp_path_factory.mktemp("data") / "wsj0mix", per_split=3)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_folder) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    result = run_train(run, data_folder)
    assert result.returncode == 0, result.stdout[-3000:]
    return run


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the trained run that a test may try to damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    config = (copy / "hyperparams.yaml").read_text().replace(str(trained_run), str(copy))
    (copy / "hyperparams.yaml").write_text(config)
    for manifest in (copy / "save").glob("*.csv"):
        manifest.write_text(manifest.read_text().replace(str(trained_run), str(copy)))
    return copy


# ---------------------------------------------------------------- every hyperparameter checked before anything
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("N_epochs", 0, "N_epochs is 0: nothing would be trained (--test_only evaluates without training)"),
        ("batch_size", "abc", "batch_size is 'abc'; expected a whole number, at least 1"),
        ("batch_size", 0, "batch_size is 0; expected a whole number, at least 1"),
        ("lr", -1, "lr is -1; expected a positive number"),
        ("threshold", ".nan", "threshold is nan; expected a finite number of dB"),
        ("dm_level_scheme", "bogus", "dm_level_scheme is 'bogus'; expected wsj0 or librimix"),
        ("test_shifts", 9, "test_shifts is 9; at most the encoder's hop of 8 samples"),
    ],
)
def test_a_bad_value_is_one_line_before_anything_is_written(tmp_path, data_folder, key, value, message):
    result = run_train(tmp_path / "run", data_folder, **{key: value})
    assert result.returncode != 0
    assert last_line(result) == f"error: {message}"
    assert not (tmp_path / "run" / "hyperparams.yaml").exists()
    assert not [path for path in (tmp_path / "run").rglob("*") if path.is_file() and path.name != LOCK_FILE]


def test_a_missing_data_folder_is_reported_before_the_model_is_built(tmp_path, monkeypatch):
    def build_nothing(*args, **kwargs):
        raise AssertionError("the model was built before the data folder was checked")

    monkeypatch.setattr(experiment, "load_record", build_nothing)
    argv = ["hparams/sepformer.yaml", f"--data_folder={tmp_path / 'nowhere'}", f"--output_folder={tmp_path / 'out'}"]
    with pytest.raises(RecipeError, match="data_folder does not exist or is not a folder: .*nowhere"):
        train.prepare_experiment(argv)


def test_a_kernel_size_whose_encoder_hop_is_zero_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "load_record", lambda *args, **kwargs: pytest.fail("the model was built"))
    argv = ["hparams/convtasnet.yaml", f"--data_folder={tmp_path}", f"--output_folder={tmp_path / 'out'}"]
    with pytest.raises(RecipeError) as refused:
        train.prepare_experiment([*argv, "--kernel_size=1"])
    assert str(refused.value) == (
        "kernel_size is 1; expected a whole number of samples, at least 2 (the encoder hops by half of it)"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is kept where CUDA exists")
@pytest.mark.parametrize("option", ["precision", "eval_precision"])
def test_fp16_without_cuda_trains_and_evaluates_in_bf16(tmp_path, monkeypatch, option):
    class Initialised(Exception):
        pass

    def capture(run_opts):
        raise Initialised(run_opts)

    monkeypatch.setattr(experiment.sb.utils.distributed, "ddp_init_group", capture)
    argv = ["hparams/convtasnet.yaml", f"--data_folder={tmp_path}", f"--output_folder={tmp_path / 'out'}"]
    with pytest.raises(Initialised) as initialised:
        train.prepare_experiment(
            [*argv, *(f"--{key}={value}" for key, value in TINY_CONVTASNET.items()), f"--{option}=fp16"]
        )
    assert initialised.value.args[0][option] == "bf16"


# ---------------------------------------------------------------- one run per output folder
def test_a_folder_held_by_a_live_process_is_refused_naming_it(tmp_path, data_folder):
    claim_output_folder(tmp_path / "run")
    try:
        result = run_train(tmp_path / "run", data_folder)
    finally:
        release_output_folder(tmp_path / "run")
    assert result.returncode != 0
    assert last_line(result).startswith(f"error: output_folder {tmp_path / 'run'} is in use by process {os.getpid()}")
    assert not (tmp_path / "run" / "hyperparams.yaml").exists()


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path, data_folder):
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from speechsep.training.run_lock import claim_output_folder; claim_output_folder({str(tmp_path / 'run')!r})",
        ],
        cwd=REPO,
        timeout=60,
    )
    assert holder.returncode == 0 and (tmp_path / "run" / LOCK_FILE).is_file()
    result = run_train(tmp_path / "run", data_folder, N_epochs=1)
    assert result.returncode == 0, result.stdout[-2000:]


# Long enough (~10 s) that the first run still holds the folder when the second has started and checks it.
FIRST_RUN_EPOCHS = 30


def test_two_trainings_into_one_folder_one_runs_the_other_refuses(tmp_path, data_folder):
    run = tmp_path / "run"
    first = subprocess.Popen(
        convtasnet_command(run, data_folder, N_epochs=FIRST_RUN_EPOCHS),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while f'"pid": {first.pid}' not in ((run / LOCK_FILE).read_text() if (run / LOCK_FILE).is_file() else ""):
        assert first.poll() is None, first.stdout.read()[-2000:]
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.1)

    second = run_train(run, data_folder, N_epochs=2, lr=0.005)
    output, _ = first.communicate(timeout=300)

    assert second.returncode != 0
    assert f"is in use by process {first.pid}" in last_line(second)
    assert first.returncode == 0, output[-2000:]
    record = resolved_values((run / "hyperparams.yaml").read_text())
    assert record["N_epochs"] == FIRST_RUN_EPOCHS and record["lr"] != 0.005  # the survivor's own config
    assert f"epoch loaded: {FIRST_RUN_EPOCHS}" in (run / "train_log.txt").read_text().splitlines()[-1]


# ---------------------------------------------------------------- the run's record and results
def test_a_rerun_with_another_model_is_refused_and_leaves_the_run_usable(run_copy, data_folder):
    before = snapshot(run_copy)
    result = run_train(run_copy, data_folder, N_encoder_out=32)
    assert result.returncode != 0
    assert "holds a run with another model or data (N_encoder_out: 16 -> 32)" in last_line(result)
    assert snapshot(run_copy) == before

    tested = run_train(run_copy, data_folder, "--test_only", sample_rate=16000)
    assert tested.returncode != 0
    assert "(sample_rate: 8000 -> 16000)" in last_line(tested)
    assert snapshot(run_copy) == before


def test_a_rerun_on_other_data_is_refused_but_testing_on_it_is_not(run_copy, data_folder, tmp_path):
    other = make_wsj0mix(tmp_path / "other", per_split=2)
    result = run_train(run_copy, other)
    assert result.returncode != 0
    assert f"data_folder: {data_folder} -> {other}" in last_line(result)
    manifests = {name: (run_copy / "save" / name).read_bytes() for name in MANIFEST_FILES}

    tested = run_train(run_copy, other, "--test_only", results_folder=tmp_path / "other_eval")
    assert tested.returncode == 0, tested.stdout[-2000:]
    assert {name: (run_copy / "save" / name).read_bytes() for name in MANIFEST_FILES} == manifests  # a resume's
    assert (tmp_path / "other_eval" / "test_results.csv").is_file()
    scored = json.loads((tmp_path / "other_eval" / "test_results_summary.json").read_text())["scored"]
    assert (run_copy / "save" / scored["checkpoint"]).is_dir() and scored["data_folder"] == str(other)
    assert scored["test_data"] == str(tmp_path / "other_eval" / TEST_ONLY_MANIFESTS / "test.csv")
    log_line = (run_copy / "train_log.txt").read_text().splitlines()[-1]
    assert f"checkpoint: {scored['checkpoint']}, data_folder: {other}," in log_line


def test_test_only_keeps_the_training_record_and_writes_its_own(run_copy, data_folder):
    record = (run_copy / "hyperparams.yaml").read_bytes()
    result = run_train(run_copy, data_folder, "--test_only", n_audio_to_save=1)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (run_copy / "hyperparams.yaml").read_bytes() == record
    assert resolved_values((run_copy / "test_hyperparams.yaml").read_text())["n_audio_to_save"] == 1


def test_test_only_with_no_loadable_checkpoint_fails_and_keeps_the_results(run_copy, data_folder):
    for checkpoint in (run_copy / "save").glob("CKPT+*/masknet.ckpt"):
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    results = (run_copy / "test_results.csv").read_bytes()

    result = run_train(run_copy, data_folder, "--test_only")

    assert result.returncode != 0
    assert last_line(result).startswith(f"error: --test_only needs a trained model, but no checkpoint in {run_copy}")
    assert (run_copy / "test_results.csv").read_bytes() == results


def test_the_record_keeps_its_references_so_an_output_folder_override_moves_everything(run_copy, data_folder):
    moved = load_hparams(run_copy / "hyperparams.yaml", f"output_folder: {run_copy.parent / 'new'}")
    assert moved["save_folder"] == f"{run_copy.parent / 'new'}/save"
    assert moved["train_log"] == f"{run_copy.parent / 'new'}/train_log.txt"

    results = (run_copy / "test_results.csv").read_bytes()
    command = [
        sys.executable,
        "train.py",
        str(run_copy / "hyperparams.yaml"),
        f"--output_folder={run_copy.parent / 'new'}",
        "--test_only",
        "--noprogressbar",
    ]
    result = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode != 0  # the new folder holds no model; it says how to score the old run's
    assert "--pretrained_separator=<folder>" in last_line(result)
    assert (run_copy / "test_results.csv").read_bytes() == results


def test_a_run_that_made_no_optimizer_step_fails_without_results(tmp_path, data_folder):
    result = run_train(tmp_path / "run", data_folder, N_epochs=1, loss_upper_lim=-1000)  # every batch skipped
    assert result.returncode != 0
    assert last_line(result).startswith("error: training made no optimizer step")
    assert not (tmp_path / "run" / "test_results.csv").exists()


def test_rerunning_a_finished_run_tests_it_again(run_copy, data_folder):
    result = run_train(run_copy, data_folder)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "epoch loaded: 2" in (run_copy / "train_log.txt").read_text().splitlines()[-1]
