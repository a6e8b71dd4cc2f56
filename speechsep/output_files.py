"""How every file the recipe writes gets to disk: whole or not at all, and never over someone else's file.

A file is produced under a hidden temporary name in its own folder (`.<stem>.<host>-<pid>-<token>.tmp<suffix>`:
the suffix is kept, so that soundfile and matplotlib still pick the format from it), flushed to disk, and
only then given its name:

- with `overwrite`, by `os.replace`, which swaps the whole file in at once (a reader sees the old file or
  the new one, never a part);
- without it, by an exclusive create (`os.link`, which fails if the name exists), so that of two processes
  writing the same name one wins and the other gets an `OutputError`, instead of both believing they wrote it.

A failure while writing (a full disk, a file size limit, Ctrl-C) removes the temporary file and leaves the
name as it was; a write failure becomes one `OutputError` line naming the file. A process killed outright
leaves only its hidden temporary file, which the next write of the same name removes. A symbolic link that
points nowhere is refused rather than followed (it would write outside the output folder). `write_files`
writes several files as one: every one is complete on disk before the first is named, and if one cannot be
named the ones named before it are removed again, so a group (a result table and its summary, the tracks of
one recording) is there whole or not at all. A group's names are given while its folder is locked
(`speechsep.locking.folder_locked`): two processes writing the same group at once never interleave their renames.
"""

import contextlib
import csv
import errno
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from speechsep.errors import RecipeError
from speechsep.locking import folder_locked

Writer = Callable[[Path], object]  # writes the content to the path it is given (soundfile, torch.save, ...)

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())
# `.<stem>.<host>-<pid>-<token>.tmp<suffix>`; `stem` and `suffix` are the target's
_TEMPORARY = re.compile(r"^\.(?P<stem>.*)\.(?P<host>\w+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp(?P<suffix>(\.[^.]*)?)$")
# errors of filesystems without hard links (some network, FUSE and FAT mounts)
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}


class OutputError(RecipeError):
    """A file that could not be written, or whose name is taken; the message names it."""


def is_temporary(path: str | Path) -> bool:
    """Whether a name is one of this module's temporary files (to be skipped when looking for inputs)."""
    return _TEMPORARY.match(Path(path).name) is not None


def write_file(path: str | Path, write: Writer, overwrite: bool = False) -> Path:
    """Have `write(temporary_path)` produce the file, then give it the name `path`; see the module docstring.

    Raises OutputError if the name is taken (without `overwrite`), is a dangling symbolic link, or the
    file cannot be written; the name is then left as it was.
    """
    return write_files({path: write}, overwrite)[0]


def write_files(
    writers: Mapping[str | Path, Writer],
    overwrite: bool = False,
    superseded: Callable[[], Iterable[Path]] | None = None,
) -> list[Path]:
    """`write_file` for several files at once: all of them are written, or none (see the module docstring).

    The names are given while each target folder is locked (`speechsep.locking.folder_locked`, waiting for
    another process that is naming files there), so that the renames of two groups written at once are never
    interleaved: with `overwrite`, a group is then one writer's whole, never part one process's and part
    another's. `superseded`, called under the same lock once the group is named, returns files of an earlier
    group that this one makes stale (its members beyond this group's count), which are removed in that step.
    """
    targets = [Path(path) for path in writers]
    for target in targets:
        check_target(target, overwrite)
    temporaries: dict[Path, Path] = {}
    try:
        for target, write in zip(targets, writers.values()):
            _remove_stale_temporaries(target)
            temporaries[target] = _create_temporary(target)
            _run_writer(write, temporaries[target], target)
        with _folders_locked(targets):
            _name_group(temporaries, overwrite, superseded)
    finally:  # KeyboardInterrupt and SystemExit too: nothing half-written stays behind
        for temporary in temporaries.values():
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
    for folder in {target.parent for target in targets}:
        with contextlib.suppress(OSError):  # the files are named; only their durability across a power cut isn't sure
            fsync_folder(folder)
    return targets


@contextlib.contextmanager
def _folders_locked(targets: list[Path]) -> Iterator[None]:
    """`folder_locked` on every folder of `targets`, always in the same order (no deadlock between two groups)."""
    with contextlib.ExitStack() as locks:
        for folder in sorted({target.parent.resolve() for target in targets}):
            try:
                locks.enter_context(folder_locked(folder))
            except OSError as err:
                raise OutputError(f"cannot lock {folder} to name files there: {err.strerror}") from None
        yield


def _name_group(
    temporaries: dict[Path, Path], overwrite: bool, superseded: Callable[[], Iterable[Path]] | None
) -> None:
    """Give each complete temporary file its target's name, then remove what `superseded` returns; run with the
    folders locked, so that undoing a failed group cannot remove names another writer has given since."""
    named: list[Path] = []
    try:
        for target, temporary in temporaries.items():
            _give_name(temporary, target, overwrite)
            named.append(target)
        for path in superseded() if superseded is not None else ():
            try:
                path.unlink(missing_ok=True)
            except OSError as err:
                raise OutputError(f"cannot remove {path}, a stale file of an earlier group: {err.strerror}") from None
    except BaseException:
        if not overwrite:  # exclusively created: these names are this call's own
            for target in named:
                with contextlib.suppress(OSError):
                    target.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def scratch_file(target: str | Path) -> Iterator[Path]:
    """A new hidden file beside `target`, named as this module's temporary files (a later write of `target`
    removes it if this process is killed), for content made piece by piece before the named files are written
    from it; removed on leaving, whatever happens."""
    target = Path(target)
    _remove_stale_temporaries(target)
    temporary = _create_temporary(target)
    try:
        yield temporary
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """`write_file` of a UTF-8 text."""
    return write_file(path, text_content(text), overwrite)


def write_csv(
    path: str | Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None, overwrite: bool = False
) -> Path:
    """`write_file` of a CSV table (see `csv_content`)."""
    return write_file(path, csv_content(rows, columns), overwrite)


def text_content(text: str) -> Writer:
    """A writer of a UTF-8 text, for `write_file` and `write_files`."""
    return lambda path: path.write_text(text, encoding="utf-8")


def csv_content(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Writer:
    """A writer of a CSV table with a header: one line per row, `columns` (default: the first row's keys)."""

    def write(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=list(columns or rows[0]), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return write


def check_not_dangling(path: str | Path) -> None:
    """Raise OutputError if `path` is a symbolic link that points to nothing: a file or folder written there
    would land wherever it points, or fail with a baffling "File exists"."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{path} is a symbolic link to nothing ({os.readlink(path)}); remove it first")


def check_target(target: str | Path, overwrite: bool) -> None:
    """Raise OutputError if `target` may not be written: a dangling link, a folder, or (unless `overwrite`)
    an existing file. A check before long work; writing checks again, exclusively."""
    target = Path(target)
    check_not_dangling(target)
    if target.is_dir():
        raise OutputError(f"{target} is a folder, not a file; remove it or choose another name")
    if not overwrite and target.exists():
        raise _exists(target)


def _exists(target: Path) -> OutputError:
    return OutputError(f"{target} exists; pass --overwrite to replace it, or choose another output folder")


def _create_temporary(target: Path) -> Path:
    """A new empty file beside `target`, created exclusively (never an existing file or link)."""
    name = f".{target.stem}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp{target.suffix}"
    temporary = target.with_name(name)
    try:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        raise write_failed(target, err) from None
    return temporary


def _run_writer(write: Writer, temporary: Path, target: Path) -> None:
    """Run the writer on the temporary file and flush it to disk; a failure to write becomes an OutputError."""
    try:
        write(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
    except (OSError, RuntimeError) as err:  # soundfile and torch.save report a full disk as RuntimeError
        raise write_failed(target, err) from None


def _give_name(temporary: Path, target: Path, overwrite: bool) -> None:
    try:
        if overwrite:
            os.replace(temporary, target)
            return
        try:
            os.link(temporary, target, follow_symlinks=False)
        except FileExistsError:
            raise _exists(target) from None
        except OSError as err:
            if err.errno not in _NO_HARD_LINKS:
                raise
            # No hard links here: claim the name exclusively, then swap the complete file in.
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                raise _exists(target) from None
            try:
                os.replace(temporary, target)
            except BaseException:
                target.unlink(missing_ok=True)  # the claim, still empty
                raise
    except OSError as err:
        raise write_failed(target, err) from None


def _remove_stale_temporaries(target: Path) -> None:
    """Remove temporary files of `target` left by processes of this host that no longer run (a kill -9)."""
    try:
        siblings = list(target.parent.glob(f".{_glob_escape(target.stem)}.*.tmp{_glob_escape(target.suffix)}"))
    except OSError:
        return
    for path in siblings:
        match = _TEMPORARY.match(path.name)
        if match and match["stem"] == target.stem and match["host"] == _HOST and not _running(int(match["pid"])):
            with contextlib.suppress(OSError):  # another process removed it, or it is not ours to remove
                path.unlink(missing_ok=True)


def _glob_escape(text: str) -> str:
    """`text` with the characters that `Path.glob` treats as patterns matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the new names) to disk; POSIX only, a no-op elsewhere."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_failed(target: Path, err: BaseException) -> OutputError:
    """The one-line OutputError of a failed write of `target`; public for the few writers that write in place."""
    if isinstance(err, OSError) and err.strerror:
        reason = err.strerror
    else:
        reason = getattr(err, "error_string", None) or (str(err).strip().splitlines() or [type(err).__name__])[0]
        reason += "; is the disk full?"
    return OutputError(f"cannot write {target}: {reason} (nothing was written there)")
