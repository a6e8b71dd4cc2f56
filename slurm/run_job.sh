#!/usr/bin/env bash
# The body of both sbatch scripts: srun one launch.sh per node, and requeue the job when SLURM warns
# of the time limit (--signal=B:TERM@...) or preempts it. Training turns the SIGTERM it receives into
# an intra-epoch checkpoint and a clean exit, and the requeued job resumes from that checkpoint.
# torchrun exits 1 after a SIGTERM even when its workers checkpointed (its agent re-raises the signal), so
# the job judges the stop by the file that train.py writes the checkpoint's path to ($SPEECHSEP_STOP_RECORD).
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

# In the submission folder: the node of the main process may be another than this one.
export SPEECHSEP_STOP_RECORD=${SPEECHSEP_STOP_RECORD:-$PWD/.stop-checkpoint-${SLURM_JOB_ID}}
rm -f "$SPEECHSEP_STOP_RECORD"  # a requeued job keeps its ID: the previous run's record is not this one's

srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash slurm/launch.sh "$@" &
srun_pid=$!
wait "$srun_pid"; status=$?
if [[ $requeue == 1 ]]; then
  wait "$srun_pid"; status=$?  # the first wait returned when the signal arrived
fi
# Training records a stop it honoured whoever sent the signal (also SLURM's --signal without B:).
if [[ -s "$SPEECHSEP_STOP_RECORD" ]]; then
  echo "Checkpoint $(<"$SPEECHSEP_STOP_RECORD") written after the stop signal; requeueing job $SLURM_JOB_ID"
  rm -f "$SPEECHSEP_STOP_RECORD"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
elif [[ $requeue == 1 ]]; then
  echo "No checkpoint was written after the stop signal (training exited with status $status); requeueing" \
    "job $SLURM_JOB_ID, which resumes from the run's last checkpoint (or starts afresh if it has none)" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
