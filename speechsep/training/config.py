"""Loading and checking the recipe's HyperPyYAML files.

Every `hparams/*.yaml` is a complete config that stock `hyperpyyaml.load_hyperpyyaml` loads. On top of it, the
command-line overrides must each name a key that exists, so a typo such as `--batchsize=4` stops the run with a
one-line error instead of being silently ignored; and the plain values are checked before anything is built.
"""

import difflib
import io
import json
import math
import re
from pathlib import Path

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.utils.run_opts import RunOptions

from speechsep.errors import RecipeError
from speechsep.training.speechbrain_internals import RunOptionsWithOverrides


class ConfigError(RecipeError):
    """A config file or an override that cannot be used as given."""


# `#` at the start of a value or after a blank would start a YAML comment and cut the value short.
_COMMENT_START = re.compile(r"(^|\s)#")


def override_value(value: str) -> str:
    """A command-line value as YAML text: as typed (numbers, lists, tags, null), but a value that YAML would
    cut short (a `#` that would start a comment) or spread over several keys (a line break) is one string."""
    if value[:1] not in ("'", '"') and (_COMMENT_START.search(value) or "\n" in value):
        return json.dumps(value)  # a double-quoted YAML scalar
    return value


class RecipeRunOptions(RunOptionsWithOverrides):
    """SpeechBrain's run options, with the overrides made YAML key by key: SpeechBrain splits them at every
    `=` (`--output_folder=a=b` became `a b`) and pastes the values as they are (`a #2` became `a`)."""

    @staticmethod
    def overrides_to_yaml(overrides: list[str]) -> str:
        lines: list[list[str]] = []  # [key, value words...] per `--key=value` or `--key value...`
        for token in overrides:
            if token.startswith("--"):
                key, has_value, value = token[2:].partition("=")
                lines.append([key, value] if has_value else [key])
            elif lines:
                lines[-1].append(token)
            else:
                raise ConfigError(f"unexpected argument {token!r}: overrides are --key=value")
        return "\n".join(f"{key}: {override_value(' '.join(words))}" if words else f"{key}:" for key, *words in lines)


def parse_arguments(argv: list[str]) -> tuple[str, RunOptions, str]:
    """`speechbrain.parse_arguments` with every override value kept whole (see `RecipeRunOptions`)."""
    return RecipeRunOptions.from_command_line_args(argv)


def overridden_keys(overrides: str) -> set[str]:
    """The top-level keys that command-line overrides (as `parse_arguments` returns them) set."""
    return {str(key) for key in _read_mapping(overrides or "", "the command line")}


def _read_mapping(text: str, origin: str) -> dict:
    try:
        mapping = ruamel.yaml.YAML().load(text)
    except ruamel.yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{origin}: not valid YAML ({problem})") from None
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{origin}: expected a mapping of keys to values, got {type(mapping).__name__}")
    return mapping


def _check_keys(overrides: dict, known: dict, origin: str) -> None:
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown hyperparameter '{key}' (from {origin}){hint}")


def _merge(document: dict, overrides: dict) -> None:
    """Apply command-line overrides to a config document as HyperPyYAML does: mappings merge, values replace."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            _merge(document[key], value)
        else:
            document[key] = value


def _tag(value) -> str | None:
    """The YAML tag of a loaded value (`!ref`, `!new:...`, `!PLACEHOLDER`), or None."""
    return getattr(getattr(value, "tag", None), "value", None)


def _effective_config(hparams_file, overrides) -> tuple[io.StringIO, dict | None]:
    """The config as a YAML stream with tagged overrides applied, and the other (checked) overrides."""
    hparams_file = Path(hparams_file)
    if not hparams_file.is_file():
        raise ConfigError(f"hparams file not found: {hparams_file}")
    yaml = ruamel.yaml.YAML()
    document = _read_mapping(hparams_file.read_text(), str(hparams_file))
    if isinstance(overrides, str):
        overrides = _read_mapping(overrides, "the command line")
    if overrides:
        _check_keys(overrides, document, "the command line")
        # A tagged value (`!new:...`, `!name:...`) is a new object: replace it rather than merge into it.
        for key in [k for k, v in overrides.items() if _tag(v)]:
            document[key] = overrides.pop(key)
    unset = [key for key, value in document.items() if _tag(value) == "!PLACEHOLDER" and key not in (overrides or {})]
    if unset:
        raise ConfigError(
            f"{unset[0]} is not set ({hparams_file} leaves it to the command line): pass --{unset[0]}=..."
        )
    stream = io.StringIO()
    yaml.dump(document, stream)
    stream.seek(0)
    stream.name = str(hparams_file)  # lets !include: find files next to the config
    return stream, overrides or None


def load_hparams(hparams_file: str | Path, overrides: str | dict | None = None) -> dict:
    """Load a recipe config with command-line overrides (YAML text or dict), unknown keys refused."""
    stream, overrides = _effective_config(hparams_file, overrides)
    return load_hyperpyyaml(stream, overrides, overrides_must_match=True)


def resolved_yaml(hparams_file: str | Path, overrides: str | dict | None = None) -> str:
    """The effective config as one self-contained YAML text, every reference resolved."""
    stream, overrides = _effective_config(hparams_file, overrides)
    return resolve_references(stream, overrides, overrides_must_match=True).getvalue()


def record_yaml(hparams_file: str | Path, overrides: str | dict | None = None) -> str:
    """The record of an experiment: the effective config as one self-contained file, references kept.

    Loading it gives the same hyperparameters as the config with its overrides, and a later override of a key
    moves whatever refers to it: `train.py RUN/hyperparams.yaml --output_folder=NEW` writes under NEW only.
    """
    stream, overrides = _effective_config(hparams_file, overrides)
    yaml = ruamel.yaml.YAML()
    document = yaml.load(stream)
    _merge(document, overrides or {})
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def resolved_values(text: str, overrides: dict | None = None) -> dict:
    """The plain values of a config text with references resolved (after `overrides`); no object is built."""
    return ruamel.yaml.YAML().load(resolve_references(text, overrides).getvalue())


# ==================================================================== checks before anything is built
def _is_int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_path(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


# Every path-valued key of the configs: where a run writes and what it reads. `""` would be the working directory,
# null or a list a crash when the folder is made or the file read (after the run's record is written).
PATH_KEYS = (
    *("output_folder", "save_folder", "results_folder", "train_log"),
    *("data_folder", "train_data", "valid_data", "test_data"),
)
OPTIONAL_PATH_KEYS = ("base_folder_dm", "noise_folder_dm", "pretrained_separator")  # null: none
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
    "mixture_mode": (lambda v: v in ("min", "max"), "min or max"),
    "dm_level_scheme": (lambda v: v in ("wsj0", "librimix"), "wsj0 or librimix"),
    "dm_rooms": (lambda v: v in (None, "whamr"), "null (no room) or whamr"),
    "sdr_permutation": (lambda v: v in ("sdr", "sir"), "sdr or sir"),
    "task": (
        lambda v: v in ("separation", "enhancement", "enhancement_both"),
        "separation, enhancement or enhancement_both",
    ),
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
    task = values.get("task", "separation")
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


def model_keys(record: str) -> set[str]:
    """The top-level keys the `modules` of a config (text with its references) are built from, transitively."""
    document = ruamel.yaml.YAML().load(record)
    seen, pending = {"num_spks", "sample_rate"}, ["modules"]
    while pending:
        key = pending.pop()
        if key in seen or key not in document:
            continue
        seen.add(key)
        stream = io.StringIO()
        ruamel.yaml.YAML().dump({key: document[key]}, stream)
        pending.extend(name for name in re.findall(r"<([\w.-]+)", stream.getvalue()) if name not in seen)
    return seen - {"modules"}


def differing_keys(previous: dict, current: dict, keys) -> list[str]:
    """`key: old -> new` for each of `keys` whose value differs between two resolved configs."""
    return [
        f"{key}: {previous.get(key)} -> {current.get(key)}"
        for key in sorted(keys)
        if previous.get(key) != current.get(key)
    ]
