"""Interrupted training: a stop signal (preemption, time limit) checkpoints and exits 0; kill -9 loses at most
the steps since the last intra-epoch checkpoint. Either way the rerun resumes mid-epoch and ends as an
uninterrupted run. Signals go where SLURM and torchrun send them: to the whole process group, DataLoader
workers included (they leave them to the training process), or to torchrun, which passes them on."""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from speechsep.training.run_lock import claim_output_folder, release_output_folder
from speechsep.training.stop_signals import STOP_RECORD_VARIABLE
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, torchrun_command

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("torchrun")]  # train.py in subprocesses, one group at a time

NUM_TRAIN = 40
NUM_VALID = 8  # 4 per rank under DDP: one to stop in the middle of validation
LOADER_WORKERS = 3  # the configs' num_workers
CLIP_SECONDS = 1.5  # training crops of CROP_SAMPLES are random offsets in each clip
CROP_SAMPLES = 4000
MODEL_FILES = ("encoder.ckpt", "masknet.ckpt", "decoder.ckpt")


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """NUM_TRAIN training and NUM_VALID validation mixtures; a test set of two, which these tests do not look at."""
    counts = {"tr": NUM_TRAIN, "cv": NUM_VALID, "tt": 2}
    return make_wsj0mix(tmp_path_factory.mktemp("data"), per_split=counts, seconds=CLIP_SECONDS)


def options(data_folder, output, **overrides) -> list[str]:
    """Random crops and the configs' speed perturbation: a resumed run must draw what an uninterrupted one did."""
    values = {
        "data_folder": data_folder,
        "output_folder": output,
        "N_epochs": 1,
        "batch_size": 1,
        **TINY_CONVTASNET,
        "training_signal_len": CROP_SAMPLES,
        "use_speedperturb": True,
        **overrides,
    }
    return ["hparams/convtasnet.yaml", *[f"--{k}={v}" for k, v in values.items()]]


def train_command(data_folder, output, **overrides) -> list[str]:
    return [sys.executable, "train.py", *options(data_folder, output, **overrides)]


def ddp_command(data_folder, output, script="train.py") -> list[str]:
    """Two gloo processes on CPU under torchrun, with the configs' loader workers."""
    train_options = options(data_folder, output, num_workers=LOADER_WORKERS)
    return torchrun_command(script, *train_options, "--distributed_backend=gloo", "--device=cpu")


def interrupt_after(command, batches: int, send_signal, steps=NUM_TRAIN, env=None) -> subprocess.Popen:
    """Start training in its own session and call `send_signal(pid)` once the progress bar shows `batches` of
    `steps` done (no sleeping on timings). Returns once every process that shares its stderr has ended."""
    process = subprocess.Popen(
        command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True, env=env
    )
    seen = ""
    while not any(int(done) >= batches for done in re.findall(rf"\b(\d+)/{steps}\b", seen)):
        chunk = process.stderr.read(64)
        assert chunk, f"training ended before it could be interrupted: {seen[-2000:]}"
        seen += chunk
    send_signal(process.pid)
    process.stderr_text = seen + process.communicate(timeout=120)[1]
    return process


def rerun(command) -> str:
    result = subprocess.run(command + ["--noprogressbar"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def final_checkpoint(output):
    return sorted((output / "save").glob("CKPT+*"))[-1]


def final_brain_state(output):
    return yaml.safe_load((final_checkpoint(output) / "brain.ckpt").read_text())


def final_weights(output) -> dict[str, torch.Tensor]:
    checkpoint = final_checkpoint(output)
    return {f"{name}:{key}": p for name in MODEL_FILES for key, p in torch.load(checkpoint / name).items()}


def assert_same_weights(output, reference):
    weights, expected = final_weights(output), final_weights(reference)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[key], expected[key]) for key in expected)


def stopped_at_step(output) -> int:
    """The step of the stop's checkpoint, from SpeechBrain's log of every message (appended by each run)."""
    stopped_at = int(re.search(r"saved a checkpoint at epoch step (\d+)", (output / "log.txt").read_text()).group(1))
    assert final_brain_state(output)["step"] == stopped_at  # the newest checkpoint is the stop's
    assert not (output / "test_results.csv").exists()
    return stopped_at


@pytest.fixture(scope="module")
def uninterrupted(data_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted") / "out"
    rerun(train_command(data_folder, output, num_workers=LOADER_WORKERS))
    return output


@pytest.fixture(scope="module")
def uninterrupted_ddp(data_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted_ddp") / "out"
    rerun(ddp_command(data_folder, output))
    return output


def test_sigterm_to_the_process_group_checkpoints_exits_0_and_the_rerun_ends_as_an_uninterrupted_run(
    data_folder, uninterrupted, tmp_path
):
    output = tmp_path / "out"
    command = train_command(data_folder, output, num_workers=LOADER_WORKERS)
    process = interrupt_after(command, 5, lambda pid: os.killpg(pid, signal.SIGTERM))
    assert process.returncode == 0
    stopped_at = stopped_at_step(output)
    assert 5 <= stopped_at < NUM_TRAIN

    rerun(command)
    assert f"Resuming epoch 1 after batch {stopped_at}" in (output / "log.txt").read_text()
    assert (output / "test_results.csv").is_file()
    assert final_brain_state(output)["optimizer_step"] == NUM_TRAIN
    assert_same_weights(output, uninterrupted)


def test_sigterm_to_torchrun_checkpoints_records_it_and_the_rerun_ends_as_an_uninterrupted_run(
    data_folder, uninterrupted_ddp, tmp_path
):
    """torchrun itself fails (1: its agent re-raises the signal after the workers have stopped; on a loaded
    machine it has also died of SIGABRT while shutting down); the record of the checkpoint tells
    slurm/run_job.sh that the stop was honoured."""
    output, record = tmp_path / "out", tmp_path / "stop_record"
    command = ddp_command(data_folder, output)
    env = {**os.environ, STOP_RECORD_VARIABLE: str(record)}
    process = interrupt_after(command, 3, lambda pid: os.kill(pid, signal.SIGTERM), NUM_TRAIN // 2, env)
    assert process.returncode in (1, -signal.SIGABRT), process.stderr_text[-3000:]
    stopped_at = stopped_at_step(output)
    assert record.read_text().strip() == str(final_checkpoint(output))

    rerun(command)
    assert f"Resuming epoch 1 after batch {stopped_at}" in (output / "log.txt").read_text()
    assert_same_weights(output, uninterrupted_ddp)


def test_workers_of_a_torchrun_killed_by_sigusr1_in_validation_checkpoint_stop_and_the_rerun_ends_as_uninterrupted(
    data_folder, uninterrupted_ddp, tmp_path
):
    """torchrun does not pass SIGUSR1 on: it dies of it, and its workers, noticing, stop as on a stop signal,
    without waiting for the end of validation (rank 0 kills it there: tests/ddp_train_and_dump.py). The run
    returns once the workers, which share torchrun's stderr, have ended."""
    output = tmp_path / "out"
    killing = ddp_command(data_folder, output, script="tests/ddp_train_and_dump.py")
    env = {**os.environ, "DDP_TEST_KILL_LAUNCHER_AT_VALID_STEP": "2"}
    result = subprocess.run(killing, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == -signal.SIGUSR1, result.stderr[-3000:]
    assert "the launcher (process" in (output / "log.txt").read_text()
    assert stopped_at_step(output) == NUM_TRAIN // 2  # the epoch's training is done, its validation is not
    claim_output_folder(output)  # raises if a worker still held it
    release_output_folder(output)

    rerun(ddp_command(data_folder, output))
    assert f"Resuming epoch 1 after batch {NUM_TRAIN // 2}" in (output / "log.txt").read_text()
    assert_same_weights(output, uninterrupted_ddp)


def test_kill_9_resumes_from_the_last_intra_epoch_checkpoint_with_the_same_total_steps(data_folder, tmp_path):
    output = tmp_path / "out"
    command = train_command(data_folder, output, ckpt_interval_steps=5)
    process = interrupt_after(command, 12, lambda pid: os.kill(pid, signal.SIGKILL))
    assert process.returncode == -signal.SIGKILL
    saved_step = final_brain_state(output)["step"]
    assert saved_step >= 10 and saved_step % 5 == 0

    rerun(command)
    assert f"Resuming epoch 1 after batch {saved_step}" in (output / "log.txt").read_text()
    assert final_brain_state(output)["optimizer_step"] == NUM_TRAIN
    assert not list((output / "save").glob(".*partial"))  # no half-written checkpoint left behind


SIGNAL_BEFORE = """
import os, signal, sys
import train
def sigterm_before(function):
    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return function(*args, **kwargs)
    return signalled
{patch}
train.main(sys.argv[1:])
"""


def run_with_sigterm_before(patch: str, command_options: list[str], record) -> subprocess.CompletedProcess:
    """train.py's main with a real SIGTERM sent to itself where `patch` (a line of Python) says."""
    command = [sys.executable, "-c", SIGNAL_BEFORE.format(patch=patch), *command_options]
    env = {**os.environ, STOP_RECORD_VARIABLE: str(record)}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def test_a_stop_signal_before_training_exits_0_without_a_checkpoint_or_a_stop_record(data_folder, tmp_path):
    """Signalled once the data and config are prepared, before the model is built."""
    output, record = tmp_path / "out", tmp_path / "stop_record"
    patch = "train.experiment.starting_model = sigterm_before(train.experiment.starting_model)"
    result = run_with_sigterm_before(patch, options(data_folder, output), record)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stop requested before training started: nothing to checkpoint" in result.stdout
    assert not list((output / "save").glob("CKPT+*")) and not record.exists()


def test_a_stop_signal_in_the_test_stage_stops_it_keeping_the_earlier_results_and_records_the_final_checkpoint(
    data_folder, uninterrupted, tmp_path
):
    """A finished run tested again (--test_only), signalled as the test stage starts; its rerun tests again."""
    output, record = tmp_path / "out", tmp_path / "stop_record"
    shutil.copytree(uninterrupted, output)
    command_options = [*options(data_folder, output), "--test_only"]
    patch = "train.Separation.on_evaluate_start = sigterm_before(train.Separation.on_evaluate_start)"
    result = run_with_sigterm_before(patch, command_options, record)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the test stage stopped, no test results written" in result.stdout
    assert not (output / "test_results.csv").exists() and (output / "previous_test" / "test_results.csv").is_file()
    assert record.read_text().strip() == str(final_checkpoint(output))

    rerun([sys.executable, "train.py", *command_options])
    assert (output / "test_results.csv").is_file() and not (output / "previous_test").exists()
