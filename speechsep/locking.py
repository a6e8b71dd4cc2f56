"""An advisory lock that a crashed process does not leave behind, and that says who holds it.

`fcntl.flock` on a lock file: the kernel releases it when the process ends, however it ends, so a stale lock
cannot block the next process. The holder writes its pid, host, start time and command line into the file,
for the message a second process prints. `folder_locked` holds the same kind of lock on a folder itself, for
the moment a group of files is named there.
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class LockHeld(Exception):
    """Another live process holds the lock; the message says which ("process <pid> on <host> (since ...)")."""


def acquire(lock_file: Path) -> IO:
    """Take the lock on `lock_file` (created if needed) without waiting; returns the open file that holds it
    until `release` or the end of the process. Raises LockHeld naming the holder."""
    handle = open(lock_file, "a+")  # noqa: SIM115 (held open while the lock is held)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        try:
            owner = json.loads(handle.read() or "{}")
        except ValueError:
            owner = {}
        handle.close()
        raise LockHeld(
            f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (since {owner.get('started', '?')})"
        ) from None
    handle.seek(0)
    handle.truncate()
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    handle.write(json.dumps(owner))
    handle.flush()
    return handle


def release(handle: IO) -> None:
    """Give the lock back (closing the file releases it)."""
    handle.close()


FALLBACK_LOCK_NAME = ".speechsep.lock"  # where a folder cannot be locked itself (some network filesystems)


@contextlib.contextmanager
def folder_locked(folder: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on `folder` itself (no file is left in it), waiting for another holder
    unless `wait` is false (then LockHeld at once). On a filesystem that cannot lock a folder, the lock is taken
    on a hidden `FALLBACK_LOCK_NAME` file in it instead."""
    descriptor = None
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        _flock(descriptor, wait)
    except OSError:  # not a lock held by another process: this folder cannot be locked itself
        if descriptor is not None:
            os.close(descriptor)
        descriptor = os.open(Path(folder) / FALLBACK_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _flock(descriptor, wait)
        except BaseException:
            os.close(descriptor)
            raise
    except BaseException:
        if descriptor is not None:
            os.close(descriptor)
        raise
    try:
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _flock(descriptor: int, wait: bool) -> None:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockHeld("another process holds it") from None
