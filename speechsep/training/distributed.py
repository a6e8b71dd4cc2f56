"""Small helpers for results and decisions that must be combined or shared across DDP processes.

Every value that changes the control flow or the training (stop now, the next learning rate, the audio examples
to write) must be the same on every rank: one rank leaving the epoch loop while another starts an epoch hangs the
job, and different learning rates make the replicas drift apart. Such values are either agreed (`any_rank`,
`sum_over_ranks`, `gather_rows`) or taken from rank 0 (`from_main`).
"""

import os

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


def is_launcher_main_process() -> bool:
    """Rank 0 of a torchrun job (or a plain run), known from the launcher's environment before the process
    group exists (SpeechBrain's `if_main_process` says True on every rank until then)."""
    return int(os.environ.get("RANK", "0")) == 0


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def _collective_device() -> str:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def world_size() -> int:
    """Number of processes training together (1 without DDP)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the process group (0 without DDP)."""
    return dist.get_rank() if is_distributed() else 0


def gather_rows(rows: list[dict], key: str = "snt_id") -> list[dict]:
    """Every rank's per-example rows, merged and de-duplicated by `key`, on every rank.

    A DistributedSampler pads the last shard by repeating examples; de-duplicating by example ID keeps
    each example counted exactly once.
    """
    if is_distributed():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, rows)
        rows = [row for rank_rows in gathered for row in rank_rows]
    unique = {}
    for row in rows:
        unique.setdefault(row[key], row)
    return list(unique.values())


def any_rank(*flags: bool) -> list[bool]:
    """For each flag, whether it is set on any process (one small all-reduce under DDP)."""
    if not is_distributed():
        return list(flags)
    values = torch.tensor([float(flag) for flag in flags], device=_collective_device())
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def from_main(*values: float) -> list[float]:
    """Rank 0's values, on every process (one small broadcast under DDP; the values themselves without DDP).

    For what each process measures differently, its own clock above all, and every process must use alike.
    """
    if not is_distributed():
        return list(values)
    shared = torch.tensor([float(value) for value in values], dtype=torch.float64, device=_collective_device())
    dist.broadcast(shared, src=0)
    return shared.tolist()


def shard_for_evaluation(loader_kwargs: dict, dataset) -> dict:
    """Under DDP, give each process its own share of a valid/test set (results are gathered afterwards)."""
    if not is_distributed():
        return loader_kwargs
    return {**loader_kwargs, "sampler": DistributedSampler(dataset, shuffle=False)}


def evaluation_position(local_index: int) -> int:
    """Where the `local_index`-th example this process evaluates stands in the set's own order.

    The sampler of `shard_for_evaluation` deals the examples out in turn (rank r gets r, r + W, r + 2W, ... of W
    processes) and pads the last round with repeats of the first examples: a position at or past the set's length
    is such a repeat. Without DDP, the position is the index itself.
    """
    return local_index * world_size() + rank()


def sum_over_ranks(*values: float) -> list[float]:
    """Each value summed over all processes (the values themselves without DDP)."""
    if not is_distributed():
        return list(values)
    totals = torch.tensor([float(value) for value in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return totals.tolist()
