"""A training run around its Brain: its checked config and folder, the model it starts from, how it ends early.

`train.py`'s `main` calls these in order; they are here so that the script reads as the Brain and its wiring.
"""

import contextlib
import logging
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import speechbrain as sb
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from speechsep.data.layouts import SPLITS
from speechsep.errors import RecipeError
from speechsep.evaluation.results_folder import PREVIOUS_TEST, TestStageError
from speechsep.inference.model_folder import HPARAMS_FILE, build_model, check_format, find_model, load_pretrained
from speechsep.models.filterbank import shortest_input
from speechsep.output_files import OutputError, write_file, write_text
from speechsep.training import preflight
from speechsep.training.budget import TrainingBudget
from speechsep.training.config import load_record, parse_arguments
from speechsep.training.distributed import any_rank, is_launcher_main_process, world_size
from speechsep.training.run_folders import results_folder_is_separate
from speechsep.training.run_lock import claim_output_folder
from speechsep.training.stop_signals import StopRequest, record_stop_checkpoint

logger = logging.getLogger(__name__)


class StopRequested(Exception):
    """A preemption or time-limit signal was honoured: the run is checkpointed and ends with exit status 0."""


def checked_experiment(argv: list[str], script: str) -> tuple[dict, dict, str, int]:
    """The config and options of the command line `argv`, checked before anything is built or written, then the
    experiment folder (`script`: the training script it keeps a copy of). Returns (hparams, run_opts, the run's
    record, the model's shortest input in samples); bad input raises RecipeError naming the culprit."""
    hparams_file, run_opts, overrides = parse_arguments(argv)
    test_only = run_opts["test_only"]
    record, values = preflight.check_config(hparams_file, overrides, test_only)
    if is_launcher_main_process():  # the other ranks of a DDP job follow their main process
        claim_output_folder(values["output_folder"])
        if results_folder_is_separate(values):
            claim_output_folder(values["results_folder"], "results_folder")
    if not (test_only and values["pretrained_separator"]):  # evaluating a folder uses none of the run's files
        preflight.check_same_experiment(values, record, test_only)

    hparams = load_record(record, hparams_file)  # built from the record itself: what trains is what it says
    preflight.check_built_model(hparams)
    run_opts = preflight.usable_precisions(run_opts, hparams)
    min_samples = shortest_input(hparams["modules"]["encoder"], hparams["modules"]["masknet"])
    if hparams["skip_prep"]:
        preflight.check_manifests(hparams, test_only, min_samples)

    sb.utils.distributed.ddp_init_group(run_opts)
    create_experiment_directory(hparams["output_folder"], script)
    return hparams, run_opts, record, min_samples


def preparation_options(hparams: dict, test_only: bool, min_samples: int) -> dict:
    """`prepare_data`'s keyword arguments for this run; with `test_only`, the test manifest alone, into the folder
    `preflight.manifest_folder` gives it."""
    return dict(
        data_folder=hparams["data_folder"],
        save_folder=preflight.manifest_folder(hparams, test_only),
        num_spks=hparams["num_spks"],
        sample_rate=hparams["sample_rate"],
        mode=hparams["mixture_mode"],
        librimix_train_subset=str(hparams["librimix_train_subset"]),
        use_wham_noise=hparams["use_wham_noise"],
        skip_bad_files=hparams["skip_bad_files"],
        task=hparams.get("task", preflight.DEFAULT_TASK),
        min_samples=min_samples,
        splits=["test"] if test_only else [s for s in SPLITS if s != "train" or not hparams["dynamic_mixing"]],
        min_talkers=preflight.min_talkers(hparams),
    )


def use_prepared_test_manifest(hparams: dict, save_folder: Path) -> None:
    """--test_only: the config's own test manifest is the one just prepared in `save_folder` (a custom one stays)."""
    if Path(hparams["test_data"]) == Path(hparams["save_folder"], "test.csv"):
        hparams["test_data"] = str(Path(save_folder) / "test.csv")


def keep_record(hparams: dict, record: str, test_only: bool) -> None:
    """Write the run's record (`hyperparams.yaml`) once every check passed; that of a --test_only evaluation is
    written with the results it describes (`TEST_RECORD`), and the training record stays as it was."""
    if test_only:
        hparams["test_record"] = record
    elif if_main_process():
        write_text(Path(hparams["output_folder"], HPARAMS_FILE), record, overwrite=True)


def create_experiment_directory(folder: str, script: str) -> None:
    """What `speechbrain.create_experiment_directory` does (a copy of the training `script`, `log.txt` for the
    logs, `env.log`), with the two copies written whole (`speechsep.output_files`) instead of in place."""
    if if_main_process():
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_file(folder / Path(script).name, lambda path: shutil.copyfile(script, path), overwrite=True)
        sb.utils.logger.setup_logging(
            sb.core.DEFAULT_LOG_CONFIG, {"handlers": {"file_handler": {"filename": str(folder / "log.txt")}}}
        )
        sys.excepthook = lambda *exc_info: logger.error("Exception:", exc_info=exc_info)  # into log.txt too
        sb.utils.quirks.log_applied_quirks()
        logger.info(f"Experiment folder: {folder}")
        write_text(folder / "env.log", sb.utils.logger.get_environment_description(), overwrite=True)
    ddp_barrier()


def starting_model(hparams, test_only):
    """The modules and checkpointer a run starts from, given `pretrained_separator`.

    Without it: the config's modules, from scratch or from the run's own checkpoint. With it and `test_only`:
    the folder's own model, whatever its architecture, and no checkpointer (the folder is what is evaluated).
    With it for training: the config's modules initialised from the folder before the first step (the
    architectures must match), unless the run has a checkpoint of its own, which it then resumes from.
    """
    folder = hparams["pretrained_separator"]
    if not folder:
        return hparams["modules"], hparams["checkpointer"]
    if test_only:
        source = find_model(folder)
        check_format(source, hparams["num_spks"], hparams["sample_rate"])
        model = build_model(source)
        logger.info(f"Evaluating {source.description}")
        return model.modules, None
    if hparams["checkpointer"].list_checkpoints():
        logger.info(f"Resuming from this run's own checkpoint; pretrained_separator {folder} is not loaded again")
    else:
        description = load_pretrained(hparams["modules"], folder, hparams["num_spks"], hparams["sample_rate"])
        logger.info(f"Initialised the encoder, masknet and decoder from {description}")
    return hparams["modules"], hparams["checkpointer"]


def error_text(err: Exception) -> str:
    """An OSError as `<file>: <reason>` where it names its file, any other error as its message."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


def stop_if_requested_before_work(stop_request: StopRequest, test_only: bool) -> None:
    """Exit 0 if a stop signal came during the preparations (config, data, model): nothing is checkpointed, so
    there is no stop record, and the rerun of the same command starts where this one did. Under DDP every
    process stops if any got it."""
    if any_rank(stop_request.requested)[0]:
        work = "the test stage" if test_only else "training"
        logger.info(f"stop requested before {work} started: nothing to checkpoint")
        sys.exit(0)


def exit_after_stop(stop: StopRequested, checkpointer) -> None:
    """Exit 0 after an honoured stop, having recorded the run's newest checkpoint (the one the stop saved in
    training, the final one in the test stage) for slurm/run_job.sh: the rerun of the same command resumes from it."""
    if if_main_process() and checkpointer is not None:
        newest = checkpointer.find_checkpoint()
        record_stop_checkpoint(newest.path if newest is not None else None)
    logger.info(f"Stop requested: {stop}; exiting")
    sys.exit(0)


def log_effective_batch_size(batch_size: int, accumulation: int) -> None:
    """Log the examples behind one optimizer step: per process, processes, accumulation steps."""
    logger.info(
        f"Effective batch size: {batch_size} per process x {world_size()} processes x {accumulation} accumulation "
        f"steps = {batch_size * world_size() * accumulation}"
    )


def stop_at_checkpoint(checkpointer, stop_request: StopRequest, step: int) -> NoReturn:
    """Preemption or time limit (SIGTERM/SIGUSR1): save an intra-epoch checkpoint and stop the run (main exits 0);
    the rerun of the same command resumes at the next batch of this epoch (after the last, with its validation)."""
    checkpointer.save_and_keep_only(  # what Brain saves when its intra-epoch checkpoint interval is reached
        end_of_epoch=False,
        num_to_keep=1,
        ckpt_predicate=lambda checkpoint: INTRA_EPOCH_CKPT_FLAG in checkpoint.meta,
        meta={INTRA_EPOCH_CKPT_FLAG: True},
        verbosity=logging.DEBUG,
    )
    raise StopRequested(f"{stop_reason(stop_request)}: saved a checkpoint at epoch step {step}")


def stop_test_stage(stop_request: StopRequest, results_folder: str) -> NoReturn:
    """Preemption or time limit in the test stage: stop without test results (no partial ones; an earlier test's
    stay set aside in `PREVIOUS_TEST`); the rerun of the same command, with nothing left to train, tests again."""
    previous = Path(results_folder, PREVIOUS_TEST)
    kept = f"; the earlier ones are kept in {previous}" if previous.is_dir() else ""
    raise StopRequested(f"{stop_reason(stop_request)}: the test stage stopped, no test results written{kept}")


def stop_reason(stop_request: StopRequest) -> str:
    """Asked again: the launcher may have gone since this process last looked."""
    return stop_request.reason if stop_request.requested else "stop requested on another process"


@contextlib.contextmanager
def exit_on_stop(checkpointer):
    """Exit 0 when the stage inside stops for a stop request (`exit_after_stop`)."""
    try:
        yield
    except StopRequested as stop:
        exit_after_stop(stop, checkpointer)


@contextlib.contextmanager
def naming_earlier_test_results(results_folder: str):
    """A test stage's failure says where the earlier test results wait, when they were set aside."""
    try:
        yield
    except (OSError, RecipeError) as err:
        previous = Path(results_folder, PREVIOUS_TEST)
        if previous.is_dir():
            raise TestStageError(f"{error_text(err)}; the earlier test results are kept in {previous}") from None
        raise


def exit_without_checkpoint(save_folder: str) -> NoReturn:
    """--test_only of the run's own model when no checkpoint of it loads: exit with an error line."""
    sys.exit(
        f"error: --test_only needs a trained model, but no checkpoint in {save_folder} loads "
        "(to score another run's or a published model: --pretrained_separator=<folder>)"
    )


def exit_if_untrained(brain: sb.Brain) -> None:
    """Exit with an error line when training made no optimizer step: an untrained model is no result."""
    if brain.optimizer_step == 0:
        sys.exit(
            f"error: training made no optimizer step: every batch was skipped ({brain.nonfinite_count} "
            "in the last epoch; the log says why); no test results written"
        )


def end_if_budget_spent(budget: TrainingBudget, epoch_counter, epoch: int) -> None:
    """When another epoch would not fit the training budget, the run is over: the epoch counter is set at its limit,
    so that the checkpoint saved next says so (the rerun trains no more; the meta's epoch is the one trained)."""
    if not budget.allows_another_epoch():
        logger.info(
            f"Training budget of {budget.minutes} min: stopping after epoch {epoch} of {epoch_counter.limit} "
            f"({budget.spent_seconds / 60:.1f} min spent; another epoch would not fit)"
        )
        epoch_counter.current = epoch_counter.limit


def log_stats(train_logger, **stats) -> None:
    """`train_logger.log_stats`; a log file that cannot be written (a full disk) is an OutputError naming it."""
    try:
        train_logger.log_stats(**stats)
    except OSError as err:
        save_file = getattr(train_logger, "save_file", "the training log")
        raise OutputError(f"cannot write {save_file}: {err.strerror or err}") from None
