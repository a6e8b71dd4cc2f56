"""A training run around its Brain: the experiment folder, the model it starts from, and how it ends early.

`train.py`'s `main` calls these in order; they are here so that the script reads as the Brain and its wiring.
"""

import logging
import shutil
import sys
from pathlib import Path

import speechbrain as sb
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from speechsep.inference.model_folder import build_model, check_format, find_model, load_pretrained
from speechsep.output_files import write_file, write_text
from speechsep.training.distributed import any_rank
from speechsep.training.stop_signals import StopRequest, record_stop_checkpoint

logger = logging.getLogger(__name__)


class StopRequested(Exception):
    """A preemption or time-limit signal was honoured: the run is checkpointed and ends with exit status 0."""


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
