"""SLURM job scripts: valid bash, and a dry run that prints the resolved torchrun command."""

import os
import subprocess

import pytest

from tests.helpers import REPO

SCRIPTS = sorted((REPO / "slurm").iterdir())


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize("script", ["train_single_node.sbatch", "train_multi_node.sbatch"])
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
    assert torchrun_line.split() == [
        "python",
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--node_rank=1",
        "--nproc_per_node=4",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=node07:29500",
        "--rdzv_id=4242",
        "train.py",
        "hparams/sepformer.yaml",
        "--data_folder=/data/wsj",
        "--batch_size=2",
    ]


def test_launch_without_a_config_prints_usage():
    result = subprocess.run(["bash", "slurm/launch.sh"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("usage: launch.sh")
