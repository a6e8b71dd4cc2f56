"""Small helpers for results that must be combined across DDP processes."""

import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes training together (1 without DDP)."""
    return dist.get_world_size() if is_distributed() else 1


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
