"""Loading the recipe's HyperPyYAML files: one base file per model, thin per-dataset overlays.

A config may name a parent with `base_config: <file>`; its other top-level keys then replace the parent's
values or add keys (added keys go at the end, so a parent's key must not refer to them as objects: the
parent declares such keys, e.g. `MaskNet: !PLACEHOLDER`), and the command-line overrides go on top. Every override must name a key that exists, so a typo such as
`--batchsize=4` stops the run with a one-line error instead of being silently ignored.
"""

import difflib
import io
from pathlib import Path

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

from speechsep.errors import RecipeError

BASE_KEY = "base_config"


class ConfigError(RecipeError):
    """A config file or an override that cannot be used as given."""


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


def _resolve_chain(hparams_file: Path) -> tuple[Path, list[tuple[str, dict]]]:
    """Follow `base_config` links: return the root file and the overlays, outermost last."""
    overlays = []
    current = hparams_file
    seen = set()
    while True:
        if not current.is_file():
            raise ConfigError(f"hparams file not found: {current}")
        if current.resolve() in seen:
            raise ConfigError(f"{current}: base_config loop")
        seen.add(current.resolve())
        mapping = _read_mapping(current.read_text(), str(current))
        if BASE_KEY not in mapping:
            return current, overlays[::-1]
        base = current.parent / str(mapping.pop(BASE_KEY))
        overlays.append((str(current), mapping))
        current = base


def _check_keys(overrides: dict, known: dict, origin: str) -> None:
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown hyperparameter '{key}' (from {origin}){hint}")


def _effective_config(hparams_file, overrides) -> tuple[io.StringIO, dict | None]:
    """The config with its overlays applied, as a YAML stream, and the checked command-line overrides."""
    root, overlays = _resolve_chain(Path(hparams_file))
    yaml = ruamel.yaml.YAML()
    document = yaml.load(root.read_text())
    for _, mapping in overlays:
        for key, value in mapping.items():
            document[key] = value  # a whole value is replaced, never merged into
    if isinstance(overrides, str):
        overrides = _read_mapping(overrides, "the command line")
    if overrides:
        _check_keys(overrides, document, "the command line")
        # A tagged value (`!new:...`, `!name:...`) is a new object: replace it rather than merge into it.
        for key in [k for k, v in overrides.items() if getattr(getattr(v, "tag", None), "value", None)]:
            document[key] = overrides.pop(key)
    stream = io.StringIO()
    yaml.dump(document, stream)
    stream.seek(0)
    stream.name = str(root)  # lets !include: find files next to the root config
    return stream, overrides or None


def load_hparams(hparams_file: str | Path, overrides: str | dict | None = None) -> dict:
    """Load a recipe config with its `base_config` chain and command-line overrides (YAML text or dict)."""
    stream, overrides = _effective_config(hparams_file, overrides)
    return load_hyperpyyaml(stream, overrides, overrides_must_match=True)


def peek(hparams_file: str | Path, key: str, overrides: str | dict | None = None):
    """The value of one plain key, references resolved, without building any object (which may touch disk)."""
    return ruamel.yaml.YAML().load(resolved_yaml(hparams_file, overrides))[key]


def resolved_yaml(hparams_file: str | Path, overrides: str | dict | None = None) -> str:
    """The effective config as one self-contained YAML text: the record of an experiment."""
    stream, overrides = _effective_config(hparams_file, overrides)
    return resolve_references(stream, overrides, overrides_must_match=True).getvalue()
