"""Stop signals (preemption, time limits): the training processes act on them, nothing else does.

SLURM, torchrun and `kill -- -PGID` deliver SIGTERM to a whole process group, DataLoader workers included, and
PyTorch's SIGTERM handler in a worker ends it: the training loop then fails on a dead worker before it can save
its checkpoint. Workers therefore leave the stop signals to the training process, which checkpoints and stops
(train.py, at the next batch): they are started with the stop signals blocked (a signal sent while a worker starts
would otherwise end it before its `worker_init_fn` runs), and their `worker_init_fn` keeps them blocked.

A torchrun launcher killed by a signal that it does not pass on (SIGUSR1, SIGKILL) would leave its workers
training on, holding the run lock: a worker whose parent changed since it started stops the same way.

slurm/run_job.sh cannot tell an honoured stop from a failure by torchrun's exit status (1 after a SIGTERM, the
agent re-raises it): the main process writes the checkpoint it saved to the file named by `STOP_RECORD_VARIABLE`.
"""

import contextlib
import functools
import multiprocessing
import multiprocessing.context
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from speechsep.output_files import write_text

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOP_RECORD_VARIABLE = "SPEECHSEP_STOP_RECORD"  # a file that the path of the stop's checkpoint is written to
LAUNCHER_PID = os.getppid()  # this process's parent when it was started (its launcher under torchrun)


def under_torchrun() -> bool:
    """Whether torchrun (torch.distributed.elastic) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ


class StopRequest:
    """Whether this process should checkpoint and stop: it got a stop signal, or its launcher is gone.

    `launcher_pid` is the parent to watch (None: none, e.g. a plain run started from a shell).
    """

    def __init__(self, launcher_pid: int | None = None):
        self.launcher_pid = launcher_pid
        self.reason: str | None = None

    @classmethod
    def for_this_process(cls) -> "StopRequest":
        """Watching the launcher under torchrun, no parent otherwise."""
        return cls(LAUNCHER_PID if under_torchrun() else None)

    def install_handlers(self) -> None:
        """Turn SIGTERM and SIGUSR1 into a request (the process then stops at a point where it can checkpoint)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.reason = self.reason or f"{signal.Signals(signum).name} received"

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived or the launcher is gone (this process was handed to another parent)."""
        if self.reason is None and self.launcher_pid is not None and os.getppid() != self.launcher_pid:
            self.reason = f"the launcher (process {self.launcher_pid}) is gone"
        return self.reason is not None


def leave_stop_signals_to(training_pid: int, worker_init_fn: Callable[[int], None] | None, worker_id: int) -> None:
    """A DataLoader `worker_init_fn`: the stop signals sent to this worker's process group are for the training
    process `training_pid` to act on; a SIGTERM from that process itself (multiprocessing ending its workers at
    exit) still ends this one, as PyTorch's own handler would. Then runs `worker_init_fn`."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # threads started from here on block them too
    threading.Thread(target=_exit_on_sigterm_from, args=(training_pid,), daemon=True).start()
    if worker_init_fn is not None:
        worker_init_fn(worker_id)


def _exit_on_sigterm_from(training_pid: int) -> None:
    """Take the blocked stop signals as they come: exit on a SIGTERM that `training_pid` sent, drop the others."""
    while True:
        received = signal.sigwaitinfo(STOP_SIGNALS)
        if received.si_signo == signal.SIGTERM and received.si_pid == training_pid:
            os._exit(0)


@contextlib.contextmanager
def stop_signals_blocked():
    """Block the stop signals in this thread, then restore its mask (a signal that came meanwhile is then delivered).

    A process forked or spawned meanwhile inherits the blocked mask (it survives exec): it is born deaf to them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StopSignalsBlockedForkProcess(multiprocessing.context.ForkProcess):
    """A forked process that starts with the stop signals blocked."""

    def start(self):
        with stop_signals_blocked():
            super().start()


class StopSignalsBlockedSpawnProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that starts with the stop signals blocked."""

    def start(self):
        with stop_signals_blocked():
            super().start()


class StopSignalsBlockedForkContext(multiprocessing.context.ForkContext):
    """The fork start method, whose processes start with the stop signals blocked."""

    Process = StopSignalsBlockedForkProcess


class StopSignalsBlockedSpawnContext(multiprocessing.context.SpawnContext):
    """The spawn start method, whose processes start with the stop signals blocked."""

    Process = StopSignalsBlockedSpawnProcess


# forkserver is left as it is: its workers are forked by the fork server, whose signal mask is its own (set when it
# started), not by this thread; they are exposed until their `worker_init_fn` runs.
STOP_SIGNALS_BLOCKED_CONTEXTS = {"fork": StopSignalsBlockedForkContext, "spawn": StopSignalsBlockedSpawnContext}
STOCK_CONTEXTS = (multiprocessing.context.ForkContext, multiprocessing.context.SpawnContext)


def stop_signals_blocked_context(requested=None):
    """The multiprocessing context to start loader workers with: the start method `requested` (a name, a context,
    or None for Python's default) with its processes starting with the stop signals blocked. A context of
    another kind (forkserver, a user's own) is returned as it is."""
    if requested is None:
        requested = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if type(requested) in STOCK_CONTEXTS:
        requested = requested.get_start_method()
    if isinstance(requested, str) and requested in STOP_SIGNALS_BLOCKED_CONTEXTS:
        return STOP_SIGNALS_BLOCKED_CONTEXTS[requested]()
    return requested


def loader_workers_leave_stop_signals(loader_kwargs: dict) -> dict:
    """DataLoader arguments whose worker processes (if any) leave the stop signals to this process, from their
    start (`stop_signals_blocked_context`) and after their `worker_init_fn` (`leave_stop_signals_to`).

    Whatever the start method (with forkserver, a worker's parent is not this process)."""
    if not loader_kwargs.get("num_workers"):
        return loader_kwargs
    init = functools.partial(leave_stop_signals_to, os.getpid(), loader_kwargs.get("worker_init_fn"))  # picklable
    context = stop_signals_blocked_context(loader_kwargs.get("multiprocessing_context"))
    return {**loader_kwargs, "worker_init_fn": init, "multiprocessing_context": context}


def record_stop_checkpoint(checkpoint: Path | None) -> None:
    """Write the path of the checkpoint that an honoured stop saved to `$SPEECHSEP_STOP_RECORD`, if it is set."""
    record = os.environ.get(STOP_RECORD_VARIABLE)
    if record and checkpoint is not None:
        write_text(record, f"{checkpoint}\n", overwrite=True)
