"""Crash-safe checkpoints: SpeechBrain's Checkpointer with atomic saves and a recovery that skips damaged ones.

SpeechBrain writes a checkpoint in place: it creates `CKPT+<time>/`, writes `CKPT.yaml` first, then one file
per recoverable. A kill -9, a node failure or a full disk in between leaves a folder that is listed and
picked on the next start; and one truncated file or garbled `CKPT.yaml` makes every restart crash.

`RobustCheckpointer` keeps SpeechBrain's layout, names, meta, keep-only logic and DDP handling (it calls
SpeechBrain's own `save_checkpoint`), and changes three things:

- saving is atomic: SpeechBrain's `save_checkpoint` writes the checkpoint inside a hidden staging folder,
  `.CKPT+<name>.partial/`, next to its final place (SpeechBrain lists only folders named `CKPT*`); it is
  flushed to disk, then renamed to `CKPT+<name>/`. Staging folders left by a crash are removed at the next
  save or recovery;
- listing skips a checkpoint whose `CKPT.yaml` cannot be read (one warning), and recovery falls back: a
  checkpoint that cannot be loaded is skipped with one warning and the next one in `find_checkpoints` order
  is loaded; if none can be, nothing is recovered and training starts over;
- a failed write (disk full, quota, read-only filesystem) removes the staging folder and raises a one-line
  `CheckpointWriteError`. Earlier checkpoints are untouched: `save_and_keep_only` deletes old checkpoints
  only once the new one is complete.

In the hparams, replace SpeechBrain's class; the arguments are the same:

    checkpointer: !new:speechsep.training.checkpoints.RobustCheckpointer
        checkpoints_dir: !ref <save_folder>
        recoverables: ...
"""

from __future__ import annotations

import logging
import os
import pathlib
import resource
import shutil
import time
import zipfile

import torch
import yaml
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    DEFAULT_SAVE_HOOKS,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    get_default_hook,
)
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process

from speechsep.errors import RecipeError
from speechsep.output_files import fsync_folder

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"  # `.CKPT+<name>.partial/`: the staging folder of a checkpoint being written
REPLACED_SUFFIX = ".replaced"  # `.CKPT+<name>.replaced`: the old copy while a custom name is saved again
REQUIRED_META = ("unixtime", "end-of-epoch")  # SpeechBrain writes both; sorting and loading need them
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes zip archives
# torch's messages for a checkpoint that was read fine but does not fit the model or optimizer
MISMATCH_MESSAGES = (
    "Error(s) in loading state_dict",
    "doesn't match the size of optimizer's group",
    "different number of parameter groups",
)


class CheckpointMismatchError(RecipeError):
    """A checkpoint whose optimizer state was saved for parameters of other shapes: another class of the model."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, read-only or failing filesystem).

    `errno` is the underlying OS error's, or None when torch's own writer failed (it reports a full disk
    as a RuntimeError).
    """


class RobustCheckpointer(Checkpointer):
    """SpeechBrain's Checkpointer with atomic saves and a recovery that skips unreadable checkpoints.

    Arguments are those of `speechbrain.utils.checkpoints.Checkpointer`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reported_broken: set[pathlib.Path] = set()  # warn once per broken folder, not per listing

    # ------------------------------------------------------------------------------------------ saving
    def save_checkpoint(
        self, meta: dict | None = None, end_of_epoch: bool = True, name: str | None = None, verbosity=logging.INFO
    ) -> Checkpoint | None:
        """Save a checkpoint atomically: SpeechBrain's `save_checkpoint` into a staging folder, then renamed.

        Same arguments and return value as SpeechBrain's. Under DDP every process runs the save hooks (the
        hooks decide who writes, as in SpeechBrain); the main process renames once all of them are done.

        Raises
        ------
        CheckpointWriteError
            If writing failed with an OSError, or a RuntimeError as torch.save raises for a full disk. The
            staging folder is removed; earlier checkpoints are untouched.
        """
        self._check_save_hooks()
        staging = final = None
        try:
            if if_main_process():
                self._remove_leftovers()
                final = self.checkpoints_dir / f"{CKPT_PREFIX}+{name or self._new_name()}"
                staging = _hidden(final, PARTIAL_SUFFIX)
            staging, final = ddp_broadcast((staging, final), src=0)
            staged = self._staging_checkpointer(staging).save_checkpoint(
                meta or {}, end_of_epoch, name=final.name.removeprefix(f"{CKPT_PREFIX}+"), verbosity=logging.DEBUG
            )
            ddp_barrier()  # every process has written its part
            if if_main_process():
                _fsync_tree(staged.path)
                _publish(staged.path, final)
                os.rmdir(staging)
            ddp_barrier()  # every process sees the new folder before it lists or deletes checkpoints
        except BaseException as error:  # KeyboardInterrupt and SystemExit too: no staging folder stays behind
            if if_main_process() and staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, (OSError, RuntimeError)):
                raise self._write_error(final, error) from error
            raise

        if not if_main_process():
            return None
        ckpt_type = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logger.log(verbosity, f"Saved an {ckpt_type} checkpoint in {final}")
        paramfiles = {key: final / path.name for key, path in staged.paramfiles.items()}
        return Checkpoint(final, staged.meta, paramfiles)

    def _check_save_hooks(self) -> None:
        """Raise RuntimeError (a configuration error, not a write error) for a recoverable nothing can save."""
        for key, obj in self.recoverables.items():
            if key not in self.custom_save_hooks and get_default_hook(obj, DEFAULT_SAVE_HOOKS) is None:
                raise RuntimeError(f"Don't know how to save recoverable {key!r} of {type(obj)}: register a save hook")

    def _new_name(self) -> str:
        """A name as SpeechBrain gives one: the local time, and a number that makes it unique."""
        stamp = time.strftime("%Y-%m-%d+%H-%M-%S")
        number = 0
        while (self.checkpoints_dir / f"{CKPT_PREFIX}+{stamp}+{number:02d}").exists():
            number += 1
        return f"{stamp}+{number:02d}"

    def _staging_checkpointer(self, staging: pathlib.Path) -> Checkpointer:
        """A SpeechBrain Checkpointer that saves the same recoverables, with the same hooks, into `staging`."""
        return Checkpointer(staging, self.recoverables, custom_save_hooks=self.custom_save_hooks)

    def _write_error(self, final: pathlib.Path | None, error: BaseException) -> CheckpointWriteError:
        """A one-line error naming the checkpoint, the cause, and the previous checkpoint, which is intact."""
        previous = self.find_checkpoint()
        kept = f"the previous checkpoint {previous.path} is intact" if previous else "there is no earlier checkpoint"
        write_error = CheckpointWriteError(
            f"Could not write checkpoint {final or self.checkpoints_dir} ({_describe(error)}{_file_size_limit()}); "
            f"its partial folder is discarded and {kept}"
        )
        write_error.errno = getattr(error, "errno", None)
        return write_error

    def _remove_leftovers(self) -> None:
        """Remove staging folders left by a crash during a save; put back a checkpoint caught mid-replacement.

        Never raises: a leftover that cannot be removed is hidden from listing anyway.
        """
        for path in sorted(self.checkpoints_dir.glob(f".{CKPT_PREFIX}*")):
            try:
                if path.name.endswith(REPLACED_SUFFIX) and path.is_dir():
                    final = path.with_name(path.name[1 : -len(REPLACED_SUFFIX)])
                    if not final.exists():  # the crash came between the two renames of `_publish`
                        os.replace(path, final)
                        logger.info(f"Restored checkpoint {final}, left as {path.name} by an interrupted save")
                        continue
                elif not (path.name.endswith(PARTIAL_SUFFIX) and path.is_dir()):
                    continue
                logger.info(f"Removing {path}, left over by an interrupted checkpoint save")
                shutil.rmtree(path)
            except OSError as error:
                logger.warning(f"Could not remove {path}, left over by an interrupted save: {_describe(error)}")

    # ----------------------------------------------------------------------------------------- loading
    def list_checkpoints(self) -> list[Checkpoint]:
        """All checkpoints (folders `CKPT*` holding a `CKPT.yaml`, as SpeechBrain lists them), skipping with one
        warning each those whose `CKPT.yaml` cannot be read."""
        checkpoints = []
        for ckpt_dir in sorted(self.checkpoints_dir.iterdir()):
            if not (ckpt_dir.name.startswith(CKPT_PREFIX) and ckpt_dir.is_dir() and (ckpt_dir / METAFNAME).exists()):
                continue
            try:
                checkpoints.append(_read_checkpoint(ckpt_dir))
            except (OSError, ValueError, yaml.YAMLError) as error:  # UnicodeDecodeError is a ValueError
                if ckpt_dir not in self._reported_broken:
                    self._reported_broken.add(ckpt_dir)
                    logger.warning(f"Skipping checkpoint {ckpt_dir}: unreadable {METAFNAME} ({_describe(error)})")
        return checkpoints

    def load_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Load `checkpoint`, after checking that its torch files are whole.

        The check reads only each zip's central directory, so a truncated file, the usual damage, fails
        before any recoverable is touched.
        """
        for key in self.recoverables:
            if key in checkpoint.paramfiles:
                _check_not_truncated(pathlib.Path(checkpoint.paramfiles[key]))
        super().load_checkpoint(checkpoint)
        for optimizer in [obj for obj in self.recoverables.values() if isinstance(obj, torch.optim.Optimizer)]:
            _check_optimizer_fits(optimizer, checkpoint)

    def recover_if_possible(
        self, importance_key=None, max_key: str | None = None, min_key: str | None = None, ckpt_predicate=None
    ) -> Checkpoint | None:
        """Load the preferred checkpoint; if it cannot be loaded, fall back to the next ones.

        Candidates come in SpeechBrain's order of preference (`find_checkpoints` with the same arguments).
        A candidate that fails to load is skipped with one warning. Its failure may come after some
        recoverables were loaded; loading the next candidate overwrites all of them, so the state stays
        consistent (except for recoverables that candidate lacks, under `allow_partial_load` or optional
        loading). If no candidate loads, a warning says so and None is returned: the run starts over, and
        recoverables keep what the last failed attempt loaded, if anything (nothing when the torch-file
        check caught the damage).

        A checkpoint that was read but does not fit the model or optimizer means the configuration changed:
        older checkpoints would not fit either and starting over would silently discard the run, so that
        raises, as in SpeechBrain.

        Under DDP, call it on every process, as Brain does (it holds a barrier). Every process reads the same
        files, so they fail alike and pick the same checkpoint.
        """
        if if_main_process():
            self._remove_leftovers()
        ddp_barrier()  # a checkpoint put back by the main process is listed by every process
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate, max_num_checkpoints=None)
        if not candidates:
            logger.info("Would load a checkpoint here, but none found yet.")
            return None
        for checkpoint in candidates:
            try:
                self.load_checkpoint(checkpoint)
                return checkpoint
            except CheckpointMismatchError:
                raise
            except Exception as error:
                if any(message in str(error) for message in MISMATCH_MESSAGES):
                    raise RuntimeError(
                        f"Checkpoint {checkpoint.path} does not fit the current model or optimizer "
                        f"({_describe(error)}): the configuration changed since it was saved"
                    ) from error
                if checkpoint.path not in self._reported_broken:  # a --test_only run recovers twice
                    self._reported_broken.add(checkpoint.path)
                    logger.warning(f"Could not load checkpoint {checkpoint.path} ({_describe(error)}); skipping it")
        logger.warning(
            f"None of the {len(candidates)} checkpoints in {self.checkpoints_dir} could be loaded: "
            "nothing recovered, training starts over"
        )
        return None


def _check_optimizer_fits(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    """torch loads an optimizer's state without comparing shapes; a state saved for another parameter layout of the
    same weights (SpeechBrain's Conv-TasNet MaskNet vs FastMaskNet) would fail at the first step, with a traceback."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for value in optimizer.state.get(parameter, {}).values():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != parameter.shape:
                    raise CheckpointMismatchError(
                        f"checkpoint {checkpoint.path} holds optimizer state for a parameter of shape "
                        f"{list(value.shape)}, now {list(parameter.shape)}: the run trained another class of this "
                        "model (runs before 2026-12-07 trained speechsep.models.conv_tasnet.FastMaskNet under "
                        "SpeechBrain's MaskNet name); resume with the class it trained (e.g. the config in hparams/), "
                        "or fine-tune from its weights into a new output_folder with --pretrained_separator"
                    )


def _hidden(final: pathlib.Path, suffix: str) -> pathlib.Path:
    """`.CKPT+<name><suffix>` next to `final`: hidden from listing, on the same filesystem for the rename."""
    return final.with_name(f".{final.name}{suffix}")


def _fsync_tree(folder: pathlib.Path) -> None:
    """Flush the folder's files and entries to disk, so that the rename never publishes unwritten data."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
    fsync_folder(folder)


def _publish(staged: pathlib.Path, final: pathlib.Path) -> None:
    """Rename the complete staged checkpoint folder to its final name (atomic within one filesystem).

    A custom name saved again replaces the old folder, as SpeechBrain does: a folder cannot be renamed over a
    non-empty one, so the old one is first moved aside (and put back by `_remove_leftovers` if a crash comes
    in between).
    """
    replaced = None
    if final.exists():
        replaced = _hidden(final, REPLACED_SUFFIX)
        os.replace(final, replaced)
    os.replace(staged, final)
    fsync_folder(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced)


def _read_checkpoint(ckpt_dir: pathlib.Path) -> Checkpoint:
    """The checkpoint in `ckpt_dir`: its meta and one parameter file per recoverable, as SpeechBrain reads them."""
    with open(ckpt_dir / METAFNAME, encoding="utf-8") as file:
        meta = yaml.safe_load(file)
    if not isinstance(meta, dict) or not all(key in meta for key in REQUIRED_META):
        raise ValueError(f"expected a mapping with keys {', '.join(REQUIRED_META)}")
    paramfiles = {path.stem: path for path in ckpt_dir.iterdir() if path.suffix == PARAMFILE_EXT}
    return Checkpoint(ckpt_dir, meta, paramfiles)


def _check_not_truncated(path: pathlib.Path) -> None:
    """Raise EOFError if a torch (zip) file has lost its end; other files are left to their load hook."""
    with open(path, "rb") as file:
        if file.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            return
        try:
            zipfile.ZipFile(file).close()
        except zipfile.BadZipFile as error:
            raise EOFError(f"{path.name} is cut short: {error}") from error


def _file_size_limit() -> str:
    """`, files of at most N bytes (ulimit -f)` where this process has such a limit: torch's writer reports a
    write cut short by it only as positions that do not match."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return "" if limit == resource.RLIM_INFINITY else f", files of at most {limit} bytes (ulimit -f)"


def _describe(error: BaseException) -> str:
    """`Type: first line of the message`, for one-line logs (torch's messages run over several lines)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
