"""Stepping the learning-rate scheduler that the YAML declares, once per epoch after validation."""

import torch
from speechbrain.nnet.schedulers import ReduceLROnPlateau, update_learning_rate


def step_scheduler(scheduler, optimizer: torch.optim.Optimizer, epoch: int, valid_loss: float) -> None:
    """Advance `scheduler` by one epoch given the validation loss (lower is better).

    Accepts SpeechBrain's ReduceLROnPlateau (called with the optimizers, epoch and loss) and SpeechBrain's
    metric-driven schedulers such as NewBobScheduler (called with the loss); both return the old and new
    learning rate. `None` keeps the learning rate constant. (Upstream handles ReduceLROnPlateau only.)
    """
    if scheduler is None:
        return
    if isinstance(scheduler, ReduceLROnPlateau):
        _, new_lr = scheduler([optimizer], epoch, valid_loss)
    elif callable(scheduler):
        _, new_lr = scheduler(valid_loss)
    else:
        raise TypeError(f"lr_scheduler of type {type(scheduler).__name__} is not supported")
    update_learning_rate(optimizer, new_lr)
