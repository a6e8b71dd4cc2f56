"""Run train.main under torchrun, then save this rank's parameters (for tests/test_distributed.py).

torchrun --nproc_per_node=2 tests/ddp_train_and_dump.py hparams/X.yaml --distributed_backend=gloo ...

Every rank writes `training_rank<rank>.json` to the output folder: `batch_losses`, the loss of each batch it
back-propagated as [epoch, loss] pairs; `train_si_snr`, each epoch's logged train SI-SNR; `lr`, each epoch's
learning rate. Injections, read from the environment by this worker only:

- DDP_TEST_STOP_AT_STEP=k: rank 0 sends itself SIGUSR1 before step k of epoch 1 (every rank must stop there);
  once that run has stopped, train.main runs again in the same processes and process group, and resumes from
  its checkpoint as the rerun of the same command would.
- DDP_TEST_RANK1_EPOCH_MINUTES=m: the budget's clock on rank 1 says that each epoch lasted m minutes.
- DDP_TEST_KILL_LAUNCHER_AT_VALID_STEP=k: rank 0 kills its launcher (torchrun) with SIGUSR1, which torchrun does
  not pass on, before validation step k of epoch 1, and goes on once it has been handed to another parent.
"""

import itertools
import json
import os
import signal
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import speechbrain as sb  # noqa: E402
import torch  # noqa: E402

import speechsep.training.budget  # noqa: E402
import train  # noqa: E402

RANK = int(os.environ.get("RANK", 0))


def record_training(record: dict) -> None:
    """Keep the loss of every back-propagated batch (the one `filter_loss` returns) with its epoch, and each
    epoch's train SI-SNR as logged, at full precision, and the learning rate it trained at."""
    filter_loss, on_stage_end = train.Separation.filter_loss, train.Separation.on_stage_end

    def recording_loss(self, loss_per_example):
        loss, skip_reason = filter_loss(self, loss_per_example)
        if skip_reason is None:
            record["batch_losses"].append([self.hparams.epoch_counter.current, float(loss)])
        return loss, skip_reason

    def recording_stats(self, stage, stage_loss, epoch=None):
        on_stage_end(self, stage, stage_loss, epoch)
        if stage == sb.Stage.TRAIN:
            record["train_si_snr"][epoch] = self.train_stats["si-snr"]
            record["lr"][epoch] = self.optimizer.param_groups[0]["lr"]

    train.Separation.filter_loss, train.Separation.on_stage_end = recording_loss, recording_stats


def stop_before(step: int) -> None:
    """Rank 0 signals itself once, before training step `step` of epoch 1 (the first run only)."""
    fit_batch = train.Separation.fit_batch
    signalled = []

    def signalling(self, batch):
        if RANK == 0 and not signalled and self.hparams.epoch_counter.current == 1 and self.step == step:
            signalled.append(step)
            signal.raise_signal(signal.SIGUSR1)
        return fit_batch(self, batch)

    train.Separation.fit_batch = signalling


def kill_launcher_in_validation(step: int) -> None:
    """Rank 0 sends its launcher SIGUSR1 before validation step `step` of epoch 1, and waits until it is gone."""
    evaluate_batch = train.Separation.evaluate_batch

    def killing(self, batch, stage):
        if RANK == 0 and stage == sb.Stage.VALID and self.hparams.epoch_counter.current == 1 and self.step == step:
            launcher = os.getppid()
            os.kill(launcher, signal.SIGUSR1)
            while os.getppid() == launcher:  # the launcher's death, not a duration
                time.sleep(0.01)
        return evaluate_batch(self, batch, stage)

    train.Separation.evaluate_batch = killing


def slow_clock_on_rank1(epoch_minutes: float) -> None:
    """Rank 1's budget reads a clock that advances `epoch_minutes` per reading (one at the start of an epoch,
    one at its end)."""
    if RANK == 1:
        readings = itertools.count()
        speechsep.training.budget.time = types.SimpleNamespace(monotonic=lambda: 60.0 * epoch_minutes * next(readings))


def main(argv: list[str]) -> train.Separation:
    stop_at = os.environ.get("DDP_TEST_STOP_AT_STEP")
    if stop_at:
        stop_before(int(stop_at))
        try:
            train.main(argv)
            raise AssertionError("the injected stop did not stop the run")
        except SystemExit:
            pass
        sb.utils.distributed.ddp_init_group = lambda run_opts: None  # the resumed run keeps this job's group
    return train.main(argv)


if __name__ == "__main__":
    record = {"batch_losses": [], "train_si_snr": {}, "lr": {}}
    record_training(record)
    if os.environ.get("DDP_TEST_RANK1_EPOCH_MINUTES"):
        slow_clock_on_rank1(float(os.environ["DDP_TEST_RANK1_EPOCH_MINUTES"]))
    if os.environ.get("DDP_TEST_KILL_LAUNCHER_AT_VALID_STEP"):
        kill_launcher_in_validation(int(os.environ["DDP_TEST_KILL_LAUNCHER_AT_VALID_STEP"]))
    separator = main(sys.argv[1:])
    output = Path(separator.hparams.output_folder)
    state = {name: p.detach().cpu() for name, p in separator.modules.state_dict().items()}  # checkpoint layout
    torch.save(state, output / f"params_rank{RANK}.pt")
    (output / f"training_rank{RANK}.json").write_text(json.dumps(record))
