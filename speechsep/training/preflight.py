"""Every check a run's input passes before anything is built, and the choices a config has (tasks, mixture modes,
level schemes, rooms, permutation rules), in one place. A choice that one module implements (dynamic mixing's
level schemes and rooms, the metrics' permutation rules) is read from that module rather than written again.

The order is the one `train.py` follows: the plain values (`check_values`, `check_num_spks`), then the paths
they name (`check_inputs`, with `check_rebuilt_mixtures` and `check_writable`), all three in `check_config`;
then the run already in the output folder (`check_same_experiment`); once the model is built, what needs it
(`check_built_model`, `check_manifests`). `prepare_data.py` asks the same `check_num_spks` and
`check_mixture_mode`. Each failure is one RecipeError naming the value or path and the fix, before hours of
training rather than after.
"""

import dataclasses
import logging
import math
import re
import tempfile
from pathlib import Path

import torch
from speechbrain.utils.distributed import if_main_process

from speechsep.data.audio_checks import AudioRequirements
from speechsep.data.dynamic_mixing import DynamicMixingDataset, talker_count_distribution
from speechsep.data.layouts import REVERBERANT_LAYOUTS, DataPreparationError, check_task_fits_layout, detect_layout
from speechsep.data.manifests import check_manifest_audio, write_manifest_without, write_skipped_list
from speechsep.data.rooms import ROOM_DISTRIBUTIONS
from speechsep.data.speaker_corpus import check_folders
from speechsep.errors import RecipeError
from speechsep.evaluation.metrics import SDR_PERMUTATIONS
from speechsep.inference.model_folder import HPARAMS_FILE, check_format, find_model
from speechsep.models.filterbank import encoder_hop
from speechsep.training.config import (
    ConfigError,
    differing_keys,
    model_keys,
    overridden_keys,
    record_yaml,
    resolved_values,
)
from speechsep.training.run_folders import check_record_is_of_this_run, check_results_folder

logger = logging.getLogger(__name__)

TASKS = ("separation", "enhancement", "enhancement_both")
DEFAULT_TASK = TASKS[0]  # also of a run recorded before `task` existed
MIXTURE_MODES = ("min", "max")  # the corpora's `wav8k/min` and `wav8k/max` mixtures
LEVEL_SCHEMES = DynamicMixingDataset.LEVEL_SCHEMES  # how dynamic mixing sets the sources' levels
ROOMS = (None, *ROOM_DISTRIBUTIONS)  # None: no simulated room
MIN_NUM_SPKS = 2  # for separation; the enhancement tasks have exactly one target
TEST_ONLY_MANIFESTS = "test_manifest"  # in results_folder: the manifest a --test_only evaluation prepares


def _is_int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_path(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_regex_with_group(value) -> bool:
    try:
        return isinstance(value, str) and re.compile(value).groups >= 1
    except re.error:
        return False


def _one_of(choices) -> tuple:
    """A value check for `choices` and its description, `a, b or c` (None as `null`)."""
    names = ["null" if choice is None else str(choice) for choice in choices]
    return (lambda v: v in choices), ", ".join(names[:-1]) + f" or {names[-1]}"


# Every path-valued key of the configs: where a run writes and what it reads. `""` would be the working directory,
# null or a list a crash when the folder is made or the file read (after the run's record is written).
PATH_KEYS = (
    *("output_folder", "save_folder", "results_folder", "train_log"),
    *("data_folder", "train_data", "valid_data", "test_data"),
)
OPTIONAL_PATH_KEYS = ("base_folder_dm", "noise_folder_dm", "pretrained_separator")  # null: none
RECORDINGS_PATH_KEYS = ("source_folder", "valid_source_folder", "test_source_folder")  # hparams/recordings.yaml
# key -> (test of its value, what it must be)
VALUE_CHECKS = {
    "N_epochs": (lambda v: _is_int(v, 0), "a whole number of epochs, 0 or more"),
    "batch_size": (lambda v: _is_int(v, 1), "a whole number, at least 1"),
    "num_workers": (lambda v: _is_int(v, 0), "a whole number, 0 or more"),
    "num_spks": (lambda v: _is_int(v, 1), "a whole number of speakers"),
    "sample_rate": (lambda v: _is_int(v, 1), "a whole number of Hz"),
    "training_signal_len": (lambda v: _is_int(v, 1), "a whole number of samples, at least 1"),
    "dm_epoch_len": (lambda v: _is_int(v, 1), "a whole number of mixtures, at least 1"),
    "test_shifts": (lambda v: _is_int(v, 1), "a whole number, at least 1"),
    "kernel_size": (lambda v: _is_int(v, 2), "a whole number of samples, at least 2 (the encoder hops by half of it)"),
    "n_audio_to_save": (lambda v: v is None or _is_int(v, 0), "null or a whole number, 0 or more"),
    "num_ckpts_to_keep": (lambda v: _is_int(v, 1), "a whole number, at least 1"),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "threshold": (_is_number, "a finite number of dB"),
    "loss_upper_lim": (_is_number, "a finite number"),
    "clip_grad_norm": (_is_number, "a finite number (0 or negative: no clipping)"),
    "train_budget_minutes": (lambda v: v is None or (_is_number(v) and v > 0), "null or a positive number"),
    "mixture_mode": _one_of(MIXTURE_MODES),
    "dm_level_scheme": _one_of(LEVEL_SCHEMES),
    "dm_rooms": (lambda v: v in ROOMS, "null (no room) or " + " or ".join(ROOMS[1:])),
    "sdr_permutation": _one_of(SDR_PERMUTATIONS),
    "task": _one_of(TASKS),
    "speaker_regex": (lambda v: v is None or _is_regex_with_group(v), "null or a regular expression with a group"),
    "valid_speakers": (lambda v: _is_number(v) and 0 < v < 1, "a fraction of the talkers, between 0 and 1"),
    "test_speakers": (lambda v: _is_number(v) and 0 < v < 1, "a fraction of the talkers, between 0 and 1"),
    "valid_mixtures": (lambda v: _is_int(v, 1), "a whole number of mixtures, at least 1"),
    "test_mixtures": (lambda v: _is_int(v, 1), "a whole number of mixtures, at least 1"),
    "min_speaker_seconds": (lambda v: _is_number(v) and v >= 0, "a number of seconds, 0 or more"),
    "corpus_seed": (lambda v: _is_int(v, 0), "a whole number, 0 or more"),
    **{
        key: (lambda v: v is None or _is_path(v), "null or a path (a non-empty string)") for key in RECORDINGS_PATH_KEYS
    },
    **{key: (_is_path, "a path (a non-empty string)") for key in PATH_KEYS},
    **{key: (lambda v: v is None or _is_path(v), "null or a path (a non-empty string)") for key in OPTIONAL_PATH_KEYS},
}
# Keys that say which data a model is trained, validated and tested on: a run resumed with other values would
# mix two experiments (e.g. pick its best checkpoint across two validation sets).
DATA_KEYS = (
    *("data_folder", "mixture_mode", "librimix_train_subset", "use_wham_noise", "task"),
    *("train_data", "valid_data", "test_data", "dynamic_mixing"),
)
DYNAMIC_MIXING_KEYS = ("base_folder_dm", "noise_folder_dm", "dm_level_scheme", "dm_rooms")  # the training data then


def data_keys(values: dict) -> set[str]:
    """The keys that say which data the run with `values` uses: with dynamic mixing, its pool's rather than the
    training manifest; a key the run does not read (base_folder_dm without dynamic mixing) says nothing of it."""
    if values.get("dynamic_mixing"):
        return (set(DATA_KEYS) - {"train_data"}) | set(DYNAMIC_MIXING_KEYS)
    return set(DATA_KEYS)


def check_values(values: dict) -> None:
    """Every plain hyperparameter of the known ones, checked before anything is built or read."""
    for key, (is_valid, expected) in VALUE_CHECKS.items():
        if key in values and not is_valid(values[key]):
            raise ConfigError(f"{key} is {values[key]!r}; expected {expected}")
    task = values.get("task", DEFAULT_TASK)
    if values.get("test_mixture_consistency") and task != "separation":
        raise ConfigError(
            f"test_mixture_consistency makes one source's estimate the mixture itself; it cannot be used with task={task}"
        )
    if values.get("compute_pesq") and values.get("sample_rate") not in (8000, 16000):
        raise ConfigError(
            f"compute_pesq needs sample_rate 8000 or 16000 (PESQ's narrowband and wideband), not {values.get('sample_rate')}"
        )
    if values.get("dynamic_mixing") and task == "enhancement_both":
        raise ConfigError(
            "dynamic_mixing makes one target per speaker, not task=enhancement_both's clean mixture of them all: "
            "set dynamic_mixing=False"
        )
    if values.get("test_mixture_consistency") and values.get("use_wham_noise"):  # the noise would be shared out
        raise ConfigError(
            "test_mixture_consistency needs mixtures of speech alone; it cannot be used with use_wham_noise"
        )
    check_talker_counts(values)


def check_talker_counts(values: dict) -> None:
    """talker_counts (the numbers of talkers a mixture may hold, for a model of num_spks outputs), its weights, its
    warmup weights and share, and talker_loss agree with each other and with num_spks, the task and the data."""
    counts, weights = values.get("talker_counts"), values.get("talker_count_weights")
    warmup_weights, warmup_share = values.get("talker_count_warmup_weights"), values.get("talker_count_warmup_share")
    if warmup_share is not None and (
        isinstance(warmup_share, bool) or not isinstance(warmup_share, (int, float)) or not 0 <= warmup_share <= 1
    ):
        raise ConfigError(
            f"talker_count_warmup_share must be a share of the training from 0 to 1, got {warmup_share!r}"
        )
    if counts is None and weights is None:
        for key in ("talker_loss", "talker_count_warmup_weights"):
            if values.get(key) is not None:
                raise ConfigError(f"{key} goes with talker_counts (the numbers of talkers a mixture may hold)")
        return
    try:
        talker_count_distribution(values.get("num_spks", 2), counts, weights)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if values.get("task", DEFAULT_TASK) != "separation":
        raise ConfigError(f"talker_counts is for separation; task={values['task']} has one target per mixture")
    if "talker_loss" not in values:
        raise ConfigError(
            "talker_counts needs a talker_loss (e.g. !name:speechsep.training.losses.talker_loss): the outputs left "
            "without a talker must be scored"
        )
    if values.get("test_mixture_consistency"):
        raise ConfigError(
            "test_mixture_consistency shares what the estimates leave out among every output, the silent ones too: "
            "it cannot be used with talker_counts"
        )
    if warmup_weights is None:
        return
    if not values.get("dynamic_mixing"):
        raise ConfigError(
            "talker_count_warmup_weights are dynamic mixing's draws: set dynamic_mixing=True or null them"
        )
    try:
        talker_count_distribution(values.get("num_spks", 2), counts, warmup_weights)
    except ValueError as err:
        raise ConfigError(str(err).replace("talker_count_weights", "talker_count_warmup_weights")) from None
    if warmup_share is None:
        raise ConfigError("talker_count_warmup_weights need a talker_count_warmup_share (from 0 to 1)")


def min_talkers(values: dict) -> int | None:
    """The fewest talkers a mixture of this run may hold, when fewer than num_spks may (talker_counts), else None."""
    counts = values.get("talker_counts")
    return min(counts) if counts else None


def check_num_spks(num_spks: int, task: str = DEFAULT_TASK) -> None:
    """Fail on a task or a speaker count the recipe cannot train for, before anything is read."""
    if task not in TASKS:
        raise DataPreparationError(f"task must be one of {list(TASKS)}, got '{task}'")
    if task != "separation" and num_spks != 1:
        raise DataPreparationError(f"num_spks is {num_spks}, task={task} has one target per mixture: set num_spks=1")
    if task == "separation" and num_spks < MIN_NUM_SPKS:
        raise DataPreparationError(
            f"num_spks is {num_spks}, separation needs at least {MIN_NUM_SPKS}; "
            "for speech enhancement (one speaker in noise) set task=enhancement and num_spks=1"
        )


def check_mixture_mode(mode: str) -> None:
    """The corpora's mixtures end with their shortest (`min`) or longest (`max`) source: no other kind exists."""
    if mode not in MIXTURE_MODES:
        raise DataPreparationError(f"mode must be {' or '.join(map(repr, MIXTURE_MODES))}, got '{mode}'")


def check_config(hparams_file: str, overrides: str, test_only: bool) -> tuple[str, dict]:
    """The run's record (`record_yaml`: the config with its overrides, what `hyperparams.yaml` will hold) and its
    plain values, once the values, the run folders and the inputs they name have passed their checks."""
    record = record_yaml(hparams_file, overrides)
    values = resolved_values(record)
    check_values(values)
    if "fast_attention" in values:  # a record of a run from before the configs named the classes that run
        logger.warning(
            "fast_attention is no longer read: the classes the config names run (for fused attention, "
            "speechsep.models.transformer.FastSBTransformerBlock instead of SpeechBrain's SBTransformerBlock)"
        )
    check_record_is_of_this_run(hparams_file, values, overridden_keys(overrides))
    check_results_folder(values)
    check_inputs(values, test_only)
    return record, values


def check_writable(folder: str, key: str = "output_folder") -> None:
    """Create `folder` and fail before any training if it cannot be created or written.

    The probe is a temporary file of this call's own (nameless where the system allows): the ranks of a job, and
    other jobs, check the same folder at the same time.
    """
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise RecipeError(f"{key} {folder} cannot be written: {err.strerror or err}") from None


def check_inputs(values: dict, test_only: bool) -> None:
    """The folders and model the config names exist, and the output folder can be written, before anything
    is built (a full-size model takes a minute) and not after hours of training."""
    check_num_spks(values["num_spks"], values.get("task", DEFAULT_TASK))
    if not test_only and values["N_epochs"] < 1:
        raise ConfigError("N_epochs is 0: nothing would be trained (--test_only evaluates without training)")
    making_corpus = bool(values.get("source_folder")) and not values["skip_prep"]  # data_folder made from it
    corpus_made = Path(str(values.get("corpus_folder")), "corpus.json").is_file()
    making_corpus &= not (test_only and corpus_made)  # a test uses the corpus there as it is
    if making_corpus:
        check_recordings_folders(values, test_only)
    if not values["skip_prep"] and not making_corpus and not Path(str(values["data_folder"])).is_dir():
        raise RecipeError(f"data_folder does not exist or is not a folder: {values['data_folder']}")
    check_rebuilt_mixtures(values, test_only)
    base_folder_dm = Path(str(values["base_folder_dm"]))
    if values["dynamic_mixing"] and not test_only and not making_corpus and not base_folder_dm.is_dir():
        raise RecipeError(f"base_folder_dm does not exist or is not a folder: {values['base_folder_dm']}")
    if values["pretrained_separator"]:
        check_format(find_model(values["pretrained_separator"]), values["num_spks"], values["sample_rate"])
    for key in ("output_folder", "results_folder", "save_folder"):
        check_writable(values[key], key)


def check_recordings_folders(values: dict, test_only: bool) -> None:
    """hparams/recordings.yaml: its recordings folders exist and hold none of one another nor the run's outputs, and
    the run trains by dynamic mixing of them (its corpus has no training mixtures)."""
    for key in RECORDINGS_PATH_KEYS:
        if values[key] and not Path(str(values[key])).is_dir():
            raise RecipeError(f"{key} does not exist or is not a folder: {values[key]}")
    check_folders({key: values[key] for key in RECORDINGS_PATH_KEYS}, values["corpus_folder"], values["output_folder"])
    if not values["dynamic_mixing"] and not test_only:
        raise ConfigError(
            "source_folder's training talkers are mixed on the fly (the corpus holds no training mixtures): "
            "set dynamic_mixing=True"
        )


def check_rebuilt_mixtures(values: dict, test_only: bool) -> None:
    """Refuse the options that take a mixture for the sum of its targets where it is not: WHAMR!'s mixtures, and
    those dynamic mixing makes with `dm_rooms`, are reverberant and their targets anechoic, so speed perturbation
    or a random shift (which rebuild the mixture from the targets) would train on anechoic inputs, and test
    estimates cannot sum to a WHAMR! mixture. An enhancement task on a custom tree without noise/ would train
    on its clean target as the input. The corpus must also have the mixtures the task needs."""
    rebuilding = [] if test_only else [key for key in ("use_speedperturb", "use_rand_shift") if values.get(key)]
    if rebuilding and values["dynamic_mixing"] and values.get("dm_rooms"):
        _refuse_rebuilding(rebuilding, f"dm_rooms={values['dm_rooms']} makes reverberant mixtures of anechoic targets")
    if values["skip_prep"]:
        return
    try:
        layout = detect_layout(Path(str(values["data_folder"])))
    except DataPreparationError:  # reported by prepare_data, in its turn
        return
    data_folder = Path(str(values["data_folder"]))
    check_task_fits_layout(data_folder, layout, values.get("task", DEFAULT_TASK), values.get("use_wham_noise", False))
    options = rebuilding + (["test_mixture_consistency"] if values.get("test_mixture_consistency") else [])
    if layout in REVERBERANT_LAYOUTS and options:
        _refuse_rebuilding(options, "WHAMR!'s mixtures are reverberant and its targets anechoic")
    enhancing = values.get("task", DEFAULT_TASK) != "separation"
    noise_folder = Path(str(values["data_folder"]), "train", "noise")
    if rebuilding and layout == "custom" and enhancing and not noise_folder.is_dir():
        _refuse_rebuilding(rebuilding, "this custom tree has no train/noise/ to add back to its one target")


def _refuse_rebuilding(options: list[str], reason: str) -> None:
    raise ConfigError(
        f"{' and '.join(options)} take(s) the mixture for the sum of its targets, but {reason}: "
        f"set {', '.join(f'{key}=False' for key in options)}"
    )


def check_same_experiment(values: dict, record: str, test_only: bool) -> None:
    """Refuse to resume or test a run of the output folder with a config that changes its model or its data.

    A rerun into a folder that holds checkpoints continues that run: other model sizes would not load its
    checkpoints, other data would mix two experiments. --test_only may score other data, not another model.
    """
    previous = Path(values["output_folder"], HPARAMS_FILE)
    if not previous.is_file() or not list(Path(values["save_folder"]).glob("CKPT+*")):
        return
    # Paths the record derives from its output_folder (the manifests under save/) follow a run moved or copied.
    moved = resolved_values(previous.read_text(), {"output_folder": values["output_folder"]})
    recorded = {"task": DEFAULT_TASK, **moved}
    keys = model_keys(record)
    if not test_only:  # a key newer than the record cannot be compared
        keys |= {key for key in data_keys(values) if key in recorded}
    scalar = {key for key in keys if not isinstance(values.get(key), (dict, list))}
    differing = differing_keys(recorded, {"task": DEFAULT_TASK, **values}, scalar)
    if differing:
        raise ConfigError(
            f"output_folder {values['output_folder']} holds a run with another model or data "
            f"({'; '.join(differing)}): choose a new output_folder for a fresh start, or rerun with the run's values"
        )


def check_built_model(hparams: dict) -> None:
    """What only the built model tells: test-time shifts are delays shorter than the encoder's hop."""
    hop = encoder_hop(hparams["modules"]["encoder"])
    if hparams["test_shifts"] > hop:
        raise ConfigError(f"test_shifts is {hparams['test_shifts']}; at most the encoder's hop of {hop} samples")


def usable_precisions(run_opts, hparams: dict):
    """The run options with fp16 replaced by bf16 where CUDA is missing (fp16 autocast needs it), with a warning."""
    for option, stage in (("precision", "training"), ("eval_precision", "validation and test")):
        if "fp16" in (run_opts.get(option), hparams.get(option)) and not torch.cuda.is_available():
            logger.warning(f"{option} fp16 needs CUDA; {stage} in bf16 on this machine instead")
            run_opts = dataclasses.replace(
                run_opts, **{option: "bf16"}, overridden_args={*run_opts.overridden_args, option}
            )
    return run_opts


def manifest_folder(hparams: dict, test_only: bool) -> Path:
    """Where the run writes the manifests it prepares or filters: its `save_folder`, or with --test_only a folder
    of its `results_folder`, so that scoring other data leaves the manifests a resumed training reads as they are."""
    return Path(hparams["results_folder"], TEST_ONLY_MANIFESTS) if test_only else Path(hparams["save_folder"])


def check_manifests(hparams: dict, test_only: bool, min_samples: int) -> None:
    """With `skip_prep`, check the audio of the manifests the run reads as prepare_data.py checks a tree's (rate,
    mono, lengths, the model's shortest input, finite, no silent reference, test IDs that are safe file names):
    one line naming the CSV line before any training. With `skip_bad_files`, the bad rows are left out instead
    (the run reads `<key>_usable.csv`) and listed in `skipped_files.csv`, both in `manifest_folder`."""
    requirements = AudioRequirements(sample_rate=hparams["sample_rate"], mono=True, min_samples=min_samples)
    keys = ["valid_data", "test_data"] if not test_only else ["test_data"]
    if not (test_only or hparams["dynamic_mixing"]):
        keys.insert(0, "train_data")
    skipped = []
    for key in keys:
        bad = check_manifest_audio(
            hparams[key],
            hparams["data_folder"],
            hparams["num_spks"],
            hparams["use_wham_noise"],
            requirements,
            ids_name_files=key == "test_data",
            skip_bad=hparams["skip_bad_files"],
            min_talkers=min_talkers(hparams),
        )
        if bad:
            usable = manifest_folder(hparams, test_only) / f"{key}_usable.csv"
            write_manifest_without(hparams[key], set(bad), usable)
            hparams[key] = str(usable)
            skipped += [{"split": key, "mixture": example_id, "reason": reason} for example_id, reason in bad.items()]
    if skipped and if_main_process():
        write_skipped_list(manifest_folder(hparams, test_only), skipped)
