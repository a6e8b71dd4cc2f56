"""Learning-rate schedulers driven by train.py once per epoch."""

import pytest
import torch
from speechbrain.nnet.schedulers import ReduceLROnPlateau
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter

from speechsep.training.schedulers import HoldThenLinearDecay, step_scheduler


def optimizer_with_lr(lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_hold_then_linear_decay_sets_the_rate_of_each_next_epoch():
    optimizer = optimizer_with_lr(3e-3)
    scheduler = HoldThenLinearDecay(lr=3e-3, final_lr=1e-4, hold_epochs=2, num_epochs=5)
    rates = []
    for epoch in range(1, 6):
        rates.append(optimizer.param_groups[0]["lr"])  # the rate this epoch trained with
        step_scheduler(scheduler, optimizer, epoch, valid_loss=0.0)
    assert rates == pytest.approx([3e-3, 3e-3, 2.033e-3, 1.067e-3, 1e-4], rel=1e-3)


def test_hold_then_linear_decay_rejects_a_hold_as_long_as_the_run():
    with pytest.raises(ValueError, match="hold_epochs"):
        HoldThenLinearDecay(lr=1.0, final_lr=0.0, hold_epochs=5, num_epochs=5)


def train_epochs(checkpoint_dir, last_epoch: int) -> dict[int, float]:
    """Epochs up to `last_epoch` as train.py runs them, resuming from `checkpoint_dir` if it holds a checkpoint;
    the rate each epoch trained with."""
    optimizer = optimizer_with_lr(3e-3)
    scheduler = HoldThenLinearDecay(lr=3e-3, final_lr=1e-4, hold_epochs=2, num_epochs=5)
    counter = EpochCounter(limit=last_epoch)
    recoverables = {"optimizer": optimizer, "lr_scheduler": scheduler, "counter": counter}
    checkpointer = Checkpointer(checkpoint_dir, recoverables=recoverables)
    checkpointer.recover_if_possible()
    rates = {}
    for epoch in counter:
        rates[epoch] = optimizer.param_groups[0]["lr"]
        step_scheduler(scheduler, optimizer, epoch, valid_loss=0.0)
        checkpointer.save_and_keep_only()
    return rates


def test_hold_then_linear_decay_goes_through_a_checkpoint(tmp_path):
    """A run stopped after epoch 2 (the last at the held rate) and resumed from its checkpoint trains the
    decaying epochs 3-5 at the rates of an uninterrupted run."""
    uninterrupted = train_epochs(tmp_path / "uninterrupted", last_epoch=5)
    first_part = train_epochs(tmp_path / "resumed", last_epoch=2)
    resumed_part = train_epochs(tmp_path / "resumed", last_epoch=5)  # a fresh optimizer, scheduler and counter
    assert list(resumed_part) == [3, 4, 5]
    assert uninterrupted[3] < uninterrupted[2]  # the resumed epochs are the decaying ones
    assert {**first_part, **resumed_part} == uninterrupted


def test_plateau_scheduler_still_halves_on_a_plateau():
    optimizer = optimizer_with_lr(1.0)
    scheduler = ReduceLROnPlateau(factor=0.5, patience=0, dont_halve_until_epoch=0)
    step_scheduler(scheduler, optimizer, 1, valid_loss=1.0)
    step_scheduler(scheduler, optimizer, 2, valid_loss=2.0)  # worse: a plateau
    assert optimizer.param_groups[0]["lr"] == 0.5
