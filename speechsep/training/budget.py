"""A training budget in wall-clock minutes: stop at the epoch boundary where another epoch would not fit.

A machine whose speed varies (a shared CPU, a busy cluster node) makes a fixed number of epochs take a varying
time. With a budget, the run trains for as many whole epochs as fit, each predicted to last as long as the
slowest of the last few, and the learning-rate schedule follows the share of the budget spent instead of
the epoch count, so the rate has decayed when the budget ends. Spent time is checkpointed: a resumed run
continues the same budget. Under DDP every process counts rank 0's time, so that all of them stop at the same
epoch and step the schedule alike.
"""

import dataclasses
import time
from pathlib import Path

import yaml
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from speechsep.training.distributed import from_main

RECENT_EPOCHS = 3  # the next epoch is predicted to last as long as the slowest of these


@register_checkpoint_hooks
@dataclasses.dataclass
class TrainingBudget:
    """Seconds of training (and validation) spent, and the epoch durations that predict the next one."""

    minutes: float | None = None  # None: no budget
    spent_seconds: float = 0.0
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)
    _epoch_started: float | None = None

    def start_epoch(self) -> None:
        self._epoch_started = time.monotonic()

    def end_epoch(self) -> None:
        """Count the epoch that started at `start_epoch` (a resumed epoch counts from the resume).

        Under DDP, call it on every process: each counts the duration that rank 0 measured.
        """
        if self._epoch_started is not None:
            (duration,) = from_main(time.monotonic() - self._epoch_started)
            self.spent_seconds += duration
            self.epoch_seconds = [*self.epoch_seconds, duration][-RECENT_EPOCHS:]
            self._epoch_started = None

    def next_epoch_ends_at(self) -> float:
        """Predicted share of the budget spent when one more epoch is over (0 without a budget)."""
        if not self.minutes:
            return 0.0
        return (self.spent_seconds + max(self.epoch_seconds, default=0.0)) / (60.0 * self.minutes)

    def allows_another_epoch(self) -> bool:
        return self.next_epoch_ends_at() <= 1.0

    @mark_as_saver
    def save(self, path: str | Path) -> None:
        state = {"spent_seconds": self.spent_seconds, "epoch_seconds": self.epoch_seconds}
        Path(path).write_text(yaml.safe_dump(state))

    @mark_as_loader
    def load(self, path: str | Path, end_of_epoch: bool = False) -> None:
        state = yaml.safe_load(Path(path).read_text())
        self.spent_seconds, self.epoch_seconds = state["spent_seconds"], list(state["epoch_seconds"])
