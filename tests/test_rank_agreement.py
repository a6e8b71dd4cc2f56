"""What every DDP rank must share, in two real gloo processes: the budget's decisions, the epoch statistics a
resume restores, the positions of the evaluated examples; and an output-folder check that concurrent processes
can run together."""

import dataclasses
import itertools
import json
import multiprocessing
import types

import pytest
import torch.distributed as dist
from torch.utils.data import DistributedSampler

import speechsep.training.budget
from speechsep.training.budget import TrainingBudget
from speechsep.training.distributed import evaluation_position
from speechsep.training.preflight import check_writable
from speechsep.training.statistics import EpochStatistics

WORLD_SIZE = 2
BUDGET_MINUTES = 60
RANK1_EPOCH_MINUTES = 40  # rank 1's clock: another epoch of 40 minutes would not fit; rank 0's: it took seconds
EVALUATED = 5  # examples in the evaluated set: the sampler repeats one to give each rank 3


def as_rank(rank: int, folder: str) -> None:
    """One process of the group: take the decisions and write what it found to <folder>/rank<rank>.json."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    if rank == 1:
        readings = itertools.count()
        clock = types.SimpleNamespace(monotonic=lambda: 60.0 * RANK1_EPOCH_MINUTES * next(readings))
        speechsep.training.budget.time = clock  # this forked process's module only
    budget = TrainingBudget(minutes=BUDGET_MINUTES)
    budget.start_epoch()
    budget.end_epoch()

    own = EpochStatistics(loss_sum=10.0 * (rank + 1), batches=rank + 1, examples_seen=2 * (rank + 1))
    own.save(f"{folder}/epoch_stats.ckpt")  # every rank takes part; rank 0 writes
    dist.barrier()
    resumed = EpochStatistics()
    resumed.load(f"{folder}/epoch_stats.ckpt")

    sampler = DistributedSampler(range(EVALUATED), shuffle=False)
    found = {
        "budget": [budget.spent_seconds, budget.next_epoch_ends_at(), budget.allows_another_epoch()],
        "resumed": dataclasses.asdict(resumed),
        "resumed_over_ranks": dataclasses.asdict(resumed.over_ranks()),
        "evaluated": [[evaluation_position(k), index] for k, index in enumerate(sampler)],
    }
    with open(f"{folder}/rank{rank}.json", "w") as file:
        json.dump(found, file)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of two forked gloo processes found (tests read it; nothing here depends on timing)."""
    folder = tmp_path_factory.mktemp("ranks")
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=as_rank, args=(rank, str(folder))) for rank in range(WORLD_SIZE)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    for process in processes:
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in processes] == [0] * WORLD_SIZE
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


def test_ranks_whose_clocks_disagree_take_rank_0s_budget_decisions(ranks):
    rank0, rank1 = (found["budget"] for found in ranks)
    assert rank1 == rank0
    spent_seconds, _, allows_another_epoch = rank0
    assert spent_seconds < 60.0 * RANK1_EPOCH_MINUTES and allows_another_epoch


def test_a_resume_restores_the_epoch_statistics_of_every_rank_once(ranks):
    """The ranks had summed 10 and 20 over 1 and 2 batches: after the resume, the sum over ranks is the same."""
    rank0, rank1 = (found["resumed"] for found in ranks)
    assert (rank0["loss_sum"], rank0["batches"], rank0["examples_seen"]) == (30.0, 3, 6)
    assert rank1 == dataclasses.asdict(EpochStatistics())
    assert ranks[1]["resumed_over_ranks"] == rank0


def test_evaluation_positions_are_those_of_the_examples_the_sampler_gives(ranks):
    pairs = [pair for found in ranks for pair in found["evaluated"]]
    assert all(position == index for position, index in pairs if position < EVALUATED)
    assert sorted(index for position, index in pairs if position < EVALUATED) == list(range(EVALUATED))


def check_output_folder_repeatedly(folder: str, barrier) -> None:
    barrier.wait()
    for _ in range(200):
        check_writable(folder)


def test_concurrent_checks_of_one_output_folder_all_pass(tmp_path):
    """The ranks of a job (and other jobs) check the same folder at the same time: no check may remove
    another's probe."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    processes = [
        context.Process(target=check_output_folder_repeatedly, args=(str(tmp_path), barrier)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * 4
    assert list(tmp_path.iterdir()) == []  # no probe left behind
