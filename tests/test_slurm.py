"""SLURM job scripts: valid bash, a dry run that prints the resolved torchrun command, and a stop signal that\ncheckpoints and requeues the job (srun and scontrol faked, no SLURM needed)."""

import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPTS = sorted((REPO / "slurm").iterdir())


SBATCH_SCRIPTS = ["train_single_node.sbatch", "train_multi_node.sbatch"]


def environment_outside_slurm(**variables) -> dict[str, str]:
    """This process's environment without SLURM's and torchrun's variables, plus `variables`."""
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SLURM_") and key not in ("MASTER_ADDR", "MASTER_PORT")
    }
    return {**kept, **variables}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash(script):
    """It parses, and its dry run executes every line it reaches without an error (unbound variable,
    missing command) down to the torchrun command."""
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    result = subprocess.run(
        ["bash", str(script), "--dry-run", "hparams/sepformer.yaml", "--data_folder=/data/wsj"],
        cwd=REPO,
        env=environment_outside_slurm(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stderr == ""
    torchrun = result.stdout.strip().splitlines()[-1].split()
    assert torchrun[:3] == ["python", "-m", "torch.distributed.run"]
    assert torchrun[-3:] == ["train.py", "hparams/sepformer.yaml", "--data_folder=/data/wsj"]


def test_dry_run_outside_slurm_is_one_node_of_one_process_on_this_host():
    result = subprocess.run(
        ["bash", "slurm/launch.sh", "--dry-run", "hparams/convtasnet.yaml"],
        cwd=REPO,
        env=environment_outside_slurm(PATH="/usr/bin:/bin"),  # no nvidia-smi, no scontrol
        capture_output=True,
        text=True,
    )
    arguments = result.stdout.split()
    assert {"--nnodes=1", "--node_rank=0", "--nproc_per_node=1", "--rdzv_id=local"} <= set(arguments)
    assert f"--rdzv_endpoint={socket.gethostname()}:29500" in arguments


@pytest.mark.parametrize("script", SBATCH_SCRIPTS)
def test_sbatch_scripts_ask_for_a_stop_signal_before_the_time_limit_and_may_be_requeued(script):
    directives = [
        line.split()[1] for line in (REPO / "slurm" / script).read_text().splitlines() if line.startswith("#SBATCH")
    ]
    assert "--requeue" in directives
    # B: sends the signal to the batch shell, which is run_job.sh (the script execs it) and traps TERM.
    assert any(directive.startswith("--signal=B:TERM@") for directive in directives)
    assert (REPO / "slurm" / script).read_text().strip().splitlines()[-1] == 'exec bash slurm/run_job.sh "$@"'


# Stand-ins for SLURM's commands: they log their arguments. The fake srun trains until it gets SIGTERM, then
# exits 1 as torchrun does after its workers' interruption checkpoint, which train.py records in
# $SPEECHSEP_STOP_RECORD (here: $FAKE_CHECKPOINT, if set). With FAKE_SRUN_STATUS set it ends at once with it.
FAKE_SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_SLURM_LOG"
record_checkpoint() { if [[ -n "${FAKE_CHECKPOINT:-}" ]]; then echo "$FAKE_CHECKPOINT" > "$SPEECHSEP_STOP_RECORD"; fi; }
[[ -n "${FAKE_SRUN_STATUS:-}" ]] && { record_checkpoint; exit "$FAKE_SRUN_STATUS"; }
trap 'echo "srun got TERM" >> "$FAKE_SLURM_LOG"; kill "$sleeper"; record_checkpoint; exit 1' TERM
sleep 60 & sleeper=$!
wait "$sleeper"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_SLURM_LOG"
"""
CHECKPOINT = "results/run/save/CKPT+2026-01-01+00-00-00+00"


def start_job(tmp_path, script="train_single_node.sbatch", **variables) -> tuple[subprocess.Popen, Path]:
    """`script` started as SLURM would start it (with srun and scontrol faked); returns it and the command log.

    Its stop record is `tmp_path / "stop_record"`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "slurm.log"
    env = environment_outside_slurm(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_ID="4242",
        FAKE_SLURM_LOG=str(log),
        SPEECHSEP_STOP_RECORD=str(tmp_path / "stop_record"),
        **variables,
    )
    command = ["bash", f"slurm/{script}", "hparams/sepformer.yaml", "--data_folder=/data/wsj"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, log


def stop_job_once_training_runs(process: subprocess.Popen, log: Path) -> tuple[str, str]:
    """Send the job SIGTERM (SLURM's --signal=B:TERM@300, or a preemption) once srun has started; its output."""
    deadline = time.monotonic() + 20
    while not logged_commands(log) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=20)


def logged_commands(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


SRUN_LINE = (
    "srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash slurm/launch.sh hparams/sepformer.yaml --data_folder=/data/wsj"
)


@pytest.mark.parametrize("script", SBATCH_SCRIPTS)
def test_stop_signal_is_passed_to_training_and_the_job_is_requeued_once_it_checkpointed(tmp_path, script):
    """torchrun exits 1 after a SIGTERM: the checkpoint that training recorded, not the status, decides."""
    process, log = start_job(tmp_path, script, FAKE_CHECKPOINT=CHECKPOINT)
    stdout, stderr = stop_job_once_training_runs(process, log)
    assert process.returncode == 0, stderr
    assert logged_commands(log) == [SRUN_LINE, "srun got TERM", "scontrol requeue 4242"]
    assert f"Checkpoint {CHECKPOINT} written after the stop signal; requeueing job 4242" in stdout
    assert not (tmp_path / "stop_record").exists()


def test_a_stop_signal_without_a_checkpoint_says_so_and_ends_with_the_trainings_status(tmp_path):
    """A record left by an earlier run of the (requeued) job does not count."""
    (tmp_path / "stop_record").write_text(CHECKPOINT)
    process, log = start_job(tmp_path)
    stdout, stderr = stop_job_once_training_runs(process, log)
    assert process.returncode == 1
    assert "No checkpoint was written after the stop signal (training exited with status 1)" in stderr
    assert "Checkpoint" not in stdout
    assert logged_commands(log) == [SRUN_LINE, "srun got TERM", "scontrol requeue 4242"]


def test_a_stop_that_training_recorded_requeues_the_job_though_the_job_got_no_signal(tmp_path):
    """SLURM's --signal=TERM@... without B: signals the training processes only."""
    process, log = start_job(tmp_path, FAKE_SRUN_STATUS="0", FAKE_CHECKPOINT=CHECKPOINT)
    stdout, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    assert logged_commands(log) == [SRUN_LINE, "scontrol requeue 4242"]
    assert f"Checkpoint {CHECKPOINT} written after the stop signal" in stdout


def test_training_that_ends_by_itself_is_not_requeued_and_its_status_is_the_jobs(tmp_path):
    process, log = start_job(tmp_path, FAKE_SRUN_STATUS="3")
    process.communicate(timeout=20)
    assert process.returncode == 3
    assert logged_commands(log) == [SRUN_LINE]


@pytest.mark.parametrize("script", SBATCH_SCRIPTS)
def test_dry_run_prints_the_torchrun_command_from_the_slurm_environment(script):
    env = {
        **os.environ,
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_JOB_ID": "4242",
        "MASTER_ADDR": "node07",
    }
    result = subprocess.run(
        ["bash", f"slurm/{script}", "--dry-run", "hparams/sepformer.yaml", "--data_folder=/data/wsj", "--batch_size=2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    srun_line, torchrun_line = result.stdout.strip().splitlines()
    assert srun_line.startswith("srun --ntasks-per-node=1 bash slurm/launch.sh hparams/sepformer.yaml")
    assert shlex.split(torchrun_line) == [
        "python",
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--node_rank=1",
        "--nproc_per_node=4",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=node07:29500",
        "--rdzv_id=4242",
        "--signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
        "train.py",
        "hparams/sepformer.yaml",
        "--data_folder=/data/wsj",
        "--batch_size=2",
    ]


def test_launch_without_a_config_prints_usage():
    result = subprocess.run(["bash", "slurm/launch.sh"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("usage: launch.sh")


def test_launch_has_torchrun_pass_sigusr1_on_to_its_workers():
    """By default torchrun dies of SIGUSR1 (SLURM's --signal=USR1@...) and orphans its workers."""
    result = subprocess.run(
        ["bash", "slurm/launch.sh", "--dry-run", "hparams/convtasnet.yaml"],
        cwd=REPO,
        env=environment_outside_slurm(),
        capture_output=True,
        text=True,
    )
    (handled,) = [arg for arg in shlex.split(result.stdout) if arg.startswith("--signals_to_handle=")]
    assert {"SIGTERM", "SIGUSR1"} <= set(handled.split("=")[1].split(","))
