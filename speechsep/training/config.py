"""Loading and checking the recipe's HyperPyYAML files.

Every `hparams/*.yaml` is a complete config that stock `hyperpyyaml.load_hyperpyyaml` loads. On top of it, the
command-line overrides must each name a key that exists, so a typo such as `--batchsize=4` stops the run with a
one-line error instead of being silently ignored. The checks of the values live in `speechsep.training.preflight`.
"""

import difflib
import io
import json
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


def _effective_document(hparams_file, overrides) -> tuple[dict, dict | None]:
    """The config document with tagged overrides applied, and the other (checked) overrides."""
    hparams_file = Path(hparams_file)
    if not hparams_file.is_file():
        raise ConfigError(f"hparams file not found: {hparams_file}")
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
    return document, overrides or None


def _effective_config(hparams_file, overrides) -> tuple[io.StringIO, dict | None]:
    """The config as a YAML stream with tagged overrides applied, and the other (checked) overrides."""
    document, overrides = _effective_document(hparams_file, overrides)
    stream = io.StringIO()
    ruamel.yaml.YAML().dump(document, stream)
    stream.seek(0)
    stream.name = str(hparams_file)  # lets !include: find files next to the config
    return stream, overrides


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
    document, overrides = _effective_document(hparams_file, overrides)
    _merge(document, overrides or {})
    out = io.StringIO()
    ruamel.yaml.YAML().dump(document, out)
    return out.getvalue()


def load_record(record: str, hparams_file: str | Path) -> dict:
    """Build the objects of a run's record (`record_yaml`), so that what trains is what the record says;
    `!include:` finds files next to the config it was made from, `hparams_file`."""
    stream = io.StringIO(record)
    stream.name = str(hparams_file)
    return load_hyperpyyaml(stream)


def resolved_values(text: str, overrides: dict | None = None) -> dict:
    """The plain values of a config text with references resolved (after `overrides`); no object is built."""
    return ruamel.yaml.YAML().load(resolve_references(text, overrides).getvalue())


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
