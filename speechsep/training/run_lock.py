"""One run at a time in an output folder: an advisory lock that a crashed run does not leave behind.

Two trainings in one folder would prune each other's checkpoints and test whichever scored best, possibly the
other's. The main process of a run holds the lock of `speechsep.locking` on `<output_folder>/.lock` for as long
as it lives; the kernel releases it when the process ends, however it ends, so a stale lock cannot block the
next run. A results folder outside the output folder is locked the same way. The file says who holds it, for the message the second run prints. Under DDP only the main process
locks: the other ranks of the same job follow it, and those of another job stop when their main process does.
"""

import atexit
from pathlib import Path

from speechsep.errors import RecipeError
from speechsep.locking import LockHeld, acquire, release

LOCK_FILE = ".lock"
_held: dict[Path, object] = {}  # folder -> open lock file, kept for the life of the process


class FolderInUseError(RecipeError):
    """Another live process holds the output folder."""


def claim_output_folder(folder: str | Path, key: str = "output_folder") -> None:
    """Lock `folder` for this process (idempotent), or raise FolderInUseError naming the holder; `key` names the
    folder in the message (a `results_folder` outside the output folder is locked too)."""
    folder = Path(folder).resolve()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        handle = acquire(folder / LOCK_FILE)
    except LockHeld as holder:
        raise FolderInUseError(
            f"{key} {folder} is in use by {holder}: wait for that run to end, or choose another {key}"
        ) from None
    _held[folder] = handle
    atexit.register(release_output_folder, folder)


def release_output_folder(folder: str | Path) -> None:
    """Give the lock back before the process ends (tests, notebooks); a no-op if not held."""
    handle = _held.pop(Path(folder).resolve(), None)
    if handle is not None:
        release(handle)
