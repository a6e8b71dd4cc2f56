"""Which run a command writes to: the run whose record it was given, and a results folder of its own.

A run folder holds its record (`hyperparams.yaml`) beside `save/`, its checkpoints. The record's `output_folder`
names the folder it was written in: for a copied or moved run that is the original, whose checkpoints and results
`train.py <copy>/hyperparams.yaml` would otherwise use. A `results_folder` in another run's folder would replace
that run's test results.
"""

from pathlib import Path

from speechsep.inference.model_folder import HPARAMS_FILE
from speechsep.training.config import ConfigError


def holds_run(folder: str | Path) -> bool:
    """`folder` is a training run's output folder: its record beside its checkpoint folder."""
    folder = Path(folder)
    return (folder / HPARAMS_FILE).is_file() and (folder / "save").is_dir()


def check_record_is_of_this_run(hparams_file: str | Path, values: dict, overridden: set[str]) -> None:
    """A config read from a run folder (`train.py <run>/hyperparams.yaml`) must write to that run, unless the
    command line chooses the output_folder."""
    run = Path(hparams_file).parent
    if "output_folder" in overridden or not holds_run(run):
        return
    if run.resolve() != Path(values["output_folder"]).resolve():
        raise ConfigError(
            f"{hparams_file} is in the run folder {run}, but its output_folder is {values['output_folder']} (a copied "
            f"or moved run): that run's checkpoints and results would be used; pass --output_folder={run}"
        )


def check_results_folder(values: dict) -> None:
    """Refuse a `results_folder` that is, or lies inside, the output folder of another run."""
    output_folder = Path(values["output_folder"]).resolve()
    results_folder = Path(values["results_folder"]).resolve()
    for folder in (results_folder, *results_folder.parents):
        if folder == output_folder:
            return
        if holds_run(folder):
            where = "is" if folder == results_folder else "is inside"
            raise ConfigError(
                f"results_folder {values['results_folder']} {where} the output folder of another run ({folder}), "
                "whose test results it would replace: choose a results_folder of this run's own"
            )


def results_folder_is_separate(values: dict) -> bool:
    """The results folder lies outside the output folder (and needs a lock of its own)."""
    return not Path(values["results_folder"]).resolve().is_relative_to(Path(values["output_folder"]).resolve())
