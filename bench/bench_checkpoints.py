"""Checkpoint save/recover time: SpeechBrain's Checkpointer against the crash-safe RobustCheckpointer."""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter

from bench.markdown import section
from speechsep.training.checkpoints import RobustCheckpointer


def _recoverables(num_params: int) -> dict:
    """A model of `num_params` parameters and its Adam optimizer with moments: 3x the model on disk."""
    model = torch.nn.Linear(1000, num_params // 1000, bias=False)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 1000)).sum().backward()
    optimizer.step()
    return {"model": model, "optimizer": optimizer, "counter": EpochCounter(limit=10)}


def _median_seconds(action, repeats: int) -> float:
    action()  # warm-up: page cache, first allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool = False) -> str:
    """Median save_and_keep_only(num_to_keep=1) and recover_if_possible times, for both classes."""
    torch.set_num_threads(1)
    num_params, repeats = (2_000_000, 3) if quick else (26_000_000, 5)  # 26 M: SepFormer's size
    recoverables = _recoverables(num_params)
    caveat = " (--quick: a small state and 3 repeats, a smoke test)" if quick else ""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for checkpointer_class in (Checkpointer, RobustCheckpointer):
            checkpointer = checkpointer_class(Path(tmp) / checkpointer_class.__name__, recoverables)
            save = _median_seconds(lambda: checkpointer.save_and_keep_only(num_to_keep=1), repeats)
            recover = _median_seconds(checkpointer.recover_if_possible, repeats)
            (checkpoint,) = checkpointer.list_checkpoints()
            megabytes = sum(path.stat().st_size for path in checkpoint.path.iterdir()) / 1e6
            rows.append(f"| {checkpointer_class.__name__} | {megabytes:.0f} | {save:.3f} | {recover:.3f} |")
    return section(
        "## Checkpoint save and recover time",
        f"Median of {repeats} `save_and_keep_only(num_to_keep=1)` and `recover_if_possible()` calls for a "
        f"{num_params / 1e6:.0f} M-parameter model with its Adam state, in the system temp folder. "
        "RobustCheckpointer adds an fsync of every file and a rename; on a network filesystem the fsync "
        f"costs more than on a local disk{caveat}.",
        "checkpointer | MB per checkpoint | save (s) | recover (s)",
        rows,
        right_aligned=3,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small state and few repeats: a smoke test")
    print(run(quick=parser.parse_args().quick))
