"""Stepping the learning-rate scheduler that the YAML declares, once per epoch after validation."""

import torch
from speechbrain.nnet.schedulers import LinearScheduler, ReduceLROnPlateau, StepScheduler, update_learning_rate
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks


@register_checkpoint_hooks
class HoldThenLinearDecay:
    """Keeps the learning rate at `lr` for `hold_epochs`, then lowers it linearly to `final_lr` for the
    last epoch of `num_epochs`.

    Meant for runs with a fixed budget (the CPU demo), which stop while the model is still learning:
    a plateau-driven halving would rarely trigger there, and the last epochs at a low rate average out
    the noise of the high-rate phase. Like SpeechBrain's epoch schedulers, `scheduler(epoch)` returns the
    (old, new) rate once `epoch` is over. Under a wall-clock budget (`speechsep.training.budget`),
    `scheduler(epoch, progress)` places the next epoch at `progress`, the share of the run it will end at,
    whichever of the epoch count and the budget comes first. It depends on the epoch only: its checkpoint hooks exist because
    the recipe lists `lr_scheduler` among the checkpointer's recoverables, and store nothing.

    Example
    -------
    >>> scheduler = HoldThenLinearDecay(lr=1.0, final_lr=0.0, hold_epochs=2, num_epochs=4)
    >>> [scheduler(epoch)[1] for epoch in range(1, 5)]
    [1.0, 0.5, 0.0, 0.0]
    """

    def __init__(self, lr: float, final_lr: float, hold_epochs: int, num_epochs: int):
        if not 0 <= hold_epochs < num_epochs:
            raise ValueError(f"hold_epochs must be in [0, num_epochs), got {hold_epochs} of {num_epochs}")
        self.lr, self.final_lr = lr, final_lr
        self.hold_epochs, self.num_epochs = hold_epochs, num_epochs

    def rate(self, epoch: int, progress: float | None = None) -> float:
        """The learning rate of (1-based) `epoch`, or of the epoch that ends at `progress` of the run."""
        share = epoch / self.num_epochs if progress is None else max(epoch / self.num_epochs, progress)
        hold = self.hold_epochs / self.num_epochs
        decayed = (share - hold) / (1.0 - hold)
        return self.lr + (self.final_lr - self.lr) * min(max(decayed, 0.0), 1.0)

    def __call__(self, epoch: int, progress: float | None = None) -> tuple[float, float]:
        return self.rate(epoch), self.rate(epoch + 1, progress)

    @mark_as_saver
    def _save(self, path) -> None:
        """Nothing to keep (the rate follows the recovered epoch counter); the file marks the slot."""
        torch.save({}, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True) -> None:
        """The YAML's values stand, so a resumed run may change the schedule."""


# Schedulers whose next rate depends on the epoch number rather than on the validation loss.
EPOCH_SCHEDULERS = (HoldThenLinearDecay, LinearScheduler, StepScheduler)


def step_scheduler(
    scheduler, optimizer: torch.optim.Optimizer, epoch: int, valid_loss: float, progress: float | None = None
) -> None:
    """Advance `scheduler` by one epoch given the validation loss (lower is better) and, under a wall-clock
    budget, the share of the run that the next epoch will end at (`HoldThenLinearDecay` follows it).

    Accepts SpeechBrain's ReduceLROnPlateau (called with the optimizers, epoch and loss), the epoch-driven
    `EPOCH_SCHEDULERS` (called with the epoch) and SpeechBrain's metric-driven schedulers such as
    NewBobScheduler (called with the loss); all return the old and new learning rate. `None` keeps the
    learning rate constant. (Upstream handles ReduceLROnPlateau only.) Under DDP every process steps it with
    the same values (the loss gathered from every rank, the budget's progress by rank 0's clock), so that every
    replica trains at the same rate.
    """
    if scheduler is None:
        return
    if isinstance(scheduler, ReduceLROnPlateau):
        _, new_lr = scheduler([optimizer], epoch, valid_loss)
    elif isinstance(scheduler, HoldThenLinearDecay):
        _, new_lr = scheduler(epoch, progress)
    elif isinstance(scheduler, EPOCH_SCHEDULERS):
        _, new_lr = scheduler(epoch)
    elif callable(scheduler):
        _, new_lr = scheduler(valid_loss)
    else:
        raise TypeError(f"lr_scheduler of type {type(scheduler).__name__} is not supported")
    update_learning_rate(optimizer, new_lr)
