"""DataLoader workers leave the stop signals to the training process from their first instruction: they are
started with SIGTERM and SIGUSR1 blocked, and they still end when the loader shuts them down."""

import multiprocessing
import signal
import subprocess
import sys
import textwrap

import pytest

from speechsep.training.stop_signals import (
    STOP_SIGNALS,
    StopSignalsBlockedSpawnContext,
    loader_workers_leave_stop_signals,
    stop_signals_blocked,
    stop_signals_blocked_context,
)
from tests.helpers import REPO


def report_signal_mask(queue) -> None:
    """A process's first act: put its blocked signals on `queue`."""
    queue.put(signal.pthread_sigmask(signal.SIG_BLOCK, []))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_worker_process_is_started_with_the_stop_signals_blocked(start_method):
    context = stop_signals_blocked_context(start_method)
    queue = context.Queue()
    worker = context.Process(target=report_signal_mask, args=(queue,))
    mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    worker.start()
    blocked = queue.get(timeout=60)
    worker.join(timeout=60)
    assert set(STOP_SIGNALS) <= blocked
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask_before  # this process's mask is restored


def test_a_stop_signal_that_arrives_while_a_worker_starts_is_delivered_to_this_process_afterwards():
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        with stop_signals_blocked():
            signal.raise_signal(signal.SIGUSR1)
            assert received == []
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == [signal.SIGUSR1]


def test_the_loader_keeps_a_start_method_that_the_user_chose():
    spawning = loader_workers_leave_stop_signals({"num_workers": 1, "multiprocessing_context": "spawn"})
    forkserver = multiprocessing.get_context("forkserver")
    kept = loader_workers_leave_stop_signals({"num_workers": 1, "multiprocessing_context": forkserver})
    assert isinstance(spawning["multiprocessing_context"], StopSignalsBlockedSpawnContext)
    assert kept["multiprocessing_context"] is forkserver  # its workers are forked by the fork server: left as is


LOADER_SCRIPT = """
import torch
from speechsep.training.stop_signals import loader_workers_leave_stop_signals
loader = torch.utils.data.DataLoader(range(8), **loader_workers_leave_stop_signals({"num_workers": 2}))
batches = iter(loader)
next(batches)
print("started", flush=True)
"""


def test_the_loader_still_ends_its_workers_when_the_training_process_exits():
    """The workers ignore stop signals, but not the loader's own shutdown at exit: the process ends."""
    script = textwrap.dedent(LOADER_SCRIPT)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "started\n"
