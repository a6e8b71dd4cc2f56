"""Interrupted training: SIGTERM (preemption) checkpoints and exits 0; kill -9 loses at most the steps
since the last intra-epoch checkpoint. Either way the rerun resumes mid-epoch and ends with exactly the
optimizer steps of an uninterrupted run."""

import re
import signal
import subprocess
import sys

import pytest
import yaml

from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET

pytestmark = pytest.mark.slow  # every test runs train.py in a subprocess

NUM_TRAIN = 60


def train_command(data_folder, output, **overrides):
    values = {
        "data_folder": data_folder,
        "output_folder": output,
        "N_epochs": 1,
        "batch_size": 1,
        **TINY_CONVTASNET,
        "use_speedperturb": False,
        **overrides,
    }
    return [sys.executable, "train.py", "hparams/convtasnet.yaml", *[f"--{k}={v}" for k, v in values.items()]]


def interrupt_after(command, batches: int, signum) -> subprocess.Popen:
    """Start training and send `signum` once the progress bar shows `batches` done (no sleeping on timings)."""
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = ""
    while not any(int(done) >= batches for done in re.findall(rf"\b(\d+)/{NUM_TRAIN}\b", seen)):
        chunk = process.stderr.read(64)
        assert chunk, f"training ended before it could be interrupted: {seen[-2000:]}"
        seen += chunk
    process.send_signal(signum)
    process.communicate(timeout=120)
    return process


def final_brain_state(output):
    checkpoint = sorted((output / "save").glob("CKPT+*"))[-1]
    return yaml.safe_load((checkpoint / "brain.ckpt").read_text())


def test_sigterm_mid_epoch_checkpoints_exits_0_and_the_rerun_resumes_from_that_step(tmp_path):
    data_folder = make_wsj0mix(tmp_path / "data", per_split=NUM_TRAIN, seconds=0.5)
    output = tmp_path / "out"
    command = train_command(data_folder, output)
    process = interrupt_after(command, 5, signal.SIGTERM)
    assert process.returncode == 0
    log = output / "log.txt"  # SpeechBrain's log of every message, appended by each run
    stopped_at = int(re.search(r"saved a checkpoint at epoch step (\d+)", log.read_text()).group(1))
    assert 5 <= stopped_at < NUM_TRAIN
    assert final_brain_state(output)["step"] == stopped_at
    assert not (output / "test_results.csv").exists()

    rerun = subprocess.run(command + ["--noprogressbar"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resuming epoch 1 after batch {stopped_at}" in log.read_text()
    assert (output / "test_results.csv").is_file()
    assert final_brain_state(output)["optimizer_step"] == NUM_TRAIN


def test_kill_9_resumes_from_the_last_intra_epoch_checkpoint_with_the_same_total_steps(tmp_path):
    data_folder = make_wsj0mix(tmp_path / "data", per_split=NUM_TRAIN, seconds=0.5)
    output = tmp_path / "out"
    command = train_command(data_folder, output, ckpt_interval_steps=5)
    process = interrupt_after(command, 12, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    saved_step = final_brain_state(output)["step"]
    assert saved_step >= 10 and saved_step % 5 == 0

    rerun = subprocess.run(command + ["--noprogressbar"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resuming epoch 1 after batch {saved_step}" in (output / "log.txt").read_text()
    assert final_brain_state(output)["optimizer_step"] == NUM_TRAIN
    assert not list((output / "save").glob(".*partial"))  # no half-written checkpoint left behind
