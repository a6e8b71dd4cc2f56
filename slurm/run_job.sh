#!/usr/bin/env bash
# The body of both sbatch scripts: srun one launch.sh per node, and requeue the job when SLURM warns
# of the time limit (--signal=B:TERM@...) or preempts it. Training turns the SIGTERM it receives into
# an intra-epoch checkpoint and a clean exit, and the requeued job resumes from that checkpoint.
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  echo "srun --ntasks-per-node=1 bash slurm/launch.sh $*"
  exec bash slurm/launch.sh --dry-run "$@"
fi

requeue=0
on_signal() { requeue=1; kill -TERM "$srun_pid" 2>/dev/null; }
trap on_signal TERM USR1

srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash slurm/launch.sh "$@" &
srun_pid=$!
wait "$srun_pid"; status=$?
if [[ $requeue == 1 ]]; then
  wait "$srun_pid"; status=$?  # the first wait returned when the signal arrived
  echo "Checkpointed after a stop signal; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
