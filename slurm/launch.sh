#!/usr/bin/env bash
# Starts torchrun on this node for a SLURM job (one srun task per node), rendezvous from the SLURM
# environment. Used by train_single_node.sbatch and train_multi_node.sbatch; see README ("SLURM").
#   launch.sh [--dry-run] HPARAMS.yaml [--override=value ...]
# --dry-run prints the resolved torchrun command instead of running it (works outside SLURM too).
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
if [[ $# -lt 1 ]]; then echo "usage: launch.sh [--dry-run] HPARAMS.yaml [--override=value ...]" >&2; exit 2; fi

nnodes=${SLURM_NNODES:-1}
node_rank=${SLURM_NODEID:-0}
# GPUs of this node: SLURM's count, else what the machine shows, else 1.
gpus=${SLURM_GPUS_ON_NODE:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}
[[ -z "$gpus" || "$gpus" == 0 ]] && gpus=1
if [[ -z "${MASTER_ADDR:-}" ]]; then
  if [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  else
    MASTER_ADDR=$(hostname)
  fi
fi
master_port=${MASTER_PORT:-29500}
job_id=${SLURM_JOB_ID:-local}

command=(
  python -m torch.distributed.run
  --nnodes="$nnodes" --node_rank="$node_rank" --nproc_per_node="$gpus"
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$master_port" --rdzv_id="$job_id"
  --signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1  # passed on to the workers; SIGUSR1 would kill torchrun
  train.py "$@"
)
if [[ $dry_run == 1 ]]; then
  printf '%q ' "${command[@]}"; echo
else
  exec "${command[@]}"
fi
