"""Model folders: finding, building and exporting a separator from a folder on disk.

Three kinds of folder hold a model, and every entry point that takes a model (`separate.py --model`,
`train.py --pretrained_separator`, `export.py`, the Python API) accepts all three:

- a training run of this recipe (`hyperparams.yaml` and `save/`): its best checkpoint by validation SI-SNR;
- a folder written by `export.py`;
- a SpeechBrain model folder as published (e.g. `speechbrain/sepformer-wsj02mix` once downloaded): its
  `hyperparams.yaml` declares the modules under any top-level names and lists them in `modules:`, and its
  `pretrainer` names the weight files (`loadables`, optionally `paths`).

The two last are a self-contained inference config plus weight files; `inference_config` reduces a run to that
pair. SpeechBrain's classes that the project computes faster are built as the project's
(`speechsep.models.speechbrain_classes`), same weights. Nothing is ever downloaded.
"""

import dataclasses
import functools
import logging
import re
from pathlib import Path, PurePosixPath

import ruamel.yaml
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.inference.separation import SepformerSeparation

from speechsep.inference import model_card
from speechsep.inference.model_config import (
    HPARAMS_FILE,
    MODULE_NAMES,
    ModelFolderError,
    classes_outside_speechbrain,
    first_line,
    inference_config,
)
from speechsep.models.speechbrain_classes import with_our_classes
from speechsep.output_files import check_not_dangling, text_content, write_files
from speechsep.training.checkpoints import RobustCheckpointer

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "si-snr"  # the meta a run's checkpoints are ranked by (higher is better)
# owner/name as the Hugging Face hub spells a model id, or a URL of the hub
HUB_ID = re.compile(r"^(hf://|https?://huggingface\.co/)?[A-Za-z0-9][\w.-]*/[\w.-]+/?$")
EXPORT_MARK = "# Exported by export.py"  # how an export's hyperparams.yaml begins: how --overwrite knows its own


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What a model is built from: a self-contained inference config and the folder its weights are in."""

    config: str  # HyperPyYAML text declaring the modules (in `modules:`), num_spks and sample_rate
    weights_dir: Path  # where the pretrainer's weight files are (a run's checkpoint, or the folder itself)
    description: str  # says which weights, for logs and errors


@dataclasses.dataclass
class Model:
    """A built model: its encoder, masknet and decoder with their weights, and what it separates."""

    modules: dict[str, torch.nn.Module]
    num_spks: int
    sample_rate: int
    hparams: dict  # everything the config declares


# ==================================================================== finding a model
def _has_score(checkpoint) -> bool:
    score = checkpoint.meta.get(CHECKPOINT_KEY)
    return isinstance(score, (int, float)) and not isinstance(score, bool)


def _best_checkpoint(save_dir: Path):
    """The checkpoint of highest `si-snr` meta under a run's save folder (a SpeechBrain Checkpoint), listed as
    training lists them (`RobustCheckpointer`: an unreadable `CKPT.yaml` is skipped with a warning); one whose
    score is not a number is left out."""
    checkpoint = RobustCheckpointer(save_dir).find_checkpoint(max_key=CHECKPOINT_KEY, ckpt_predicate=_has_score)
    if checkpoint is None:
        raise ModelFolderError(
            f"{save_dir} has no checkpoint with a '{CHECKPOINT_KEY}' meta (training saves one after each validation)"
        )
    lacking = [f"{name}.ckpt" for name in MODULE_NAMES if not (checkpoint.path / f"{name}.ckpt").is_file()]
    if lacking:
        raise ModelFolderError(f"{checkpoint.path} lacks {', '.join(lacking)}")
    return checkpoint


def _not_a_folder(model_dir: str) -> ModelFolderError:
    """The error for a model folder that does not exist; a file names its folder, a hub id gets the command that
    downloads it."""
    if Path(model_dir).exists():
        return ModelFolderError(
            f"{model_dir} is a file, not a model folder: pass the folder that holds it ({Path(model_dir).parent})"
        )
    if HUB_ID.match(model_dir):
        repo_id = re.sub(r"^(hf://|https?://huggingface\.co/)", "", model_dir).rstrip("/")
        local = f"pretrained_models/{repo_id.split('/')[-1]}"
        return ModelFolderError(
            f"{model_dir} is not a folder here, and this recipe never downloads: download the model first, e.g. "
            f"`huggingface-cli download {repo_id} --local-dir {local}` (or `git clone "
            f"https://huggingface.co/{repo_id} {local}`), then pass {local}"
        )
    return ModelFolderError(f"model folder not found: {model_dir}")


def find_model(model_dir: str | Path) -> ModelSource:
    """Resolve a training run, an exported folder or a published SpeechBrain folder to its config and weights.

    A folder with `save/` is a run: its best checkpoint by validation SI-SNR is used. Any other folder with a
    `hyperparams.yaml` is taken as a model folder whose config declares its modules and whose weight files lie
    beside it (checked when the model is built). Anything else raises ModelFolderError (one line).
    """
    if not Path(model_dir).is_dir():
        raise _not_a_folder(str(model_dir))
    model_dir = Path(model_dir)
    hparams_file = model_dir / HPARAMS_FILE
    if not hparams_file.is_file():
        raise ModelFolderError(
            f"{model_dir} has no {HPARAMS_FILE}: expected a training output folder, an export or a SpeechBrain "
            "model folder"
        )
    try:
        text = hparams_file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"cannot read {hparams_file} ({err})") from None
    if (model_dir / "save").is_dir():
        checkpoint = _best_checkpoint(model_dir / "save")
        score = checkpoint.meta[CHECKPOINT_KEY]
        description = f"{model_dir}: {checkpoint.path.name} (valid si-snr {score:.2f} dB)"
        try:
            config = inference_config(text)
        except ModelFolderError as err:
            raise ModelFolderError(f"{hparams_file}: {err}") from None
        return ModelSource(config, checkpoint.path, description)
    return ModelSource(text, model_dir, f"{model_dir} (model folder)")


def check_format(source: ModelSource, num_spks: int, sample_rate: int) -> None:
    """Fail unless the model separates `num_spks` speakers at `sample_rate` Hz, by what its config declares.

    The model is built only where that differs from the run's config: a folder whose declared num_spks is not what
    its mask network makes is reported as the folder's own fault (`build_model`), not as the run's to fix.
    """
    document = ruamel.yaml.YAML().load(source.config)
    declared = tuple(document.get(key) if isinstance(document, dict) else None for key in ("num_spks", "sample_rate"))
    if declared != (num_spks, sample_rate):
        build_model(source, fast=False)
        raise ModelFolderError(
            f"{source.description} separates {declared[0]} speakers at {declared[1]} Hz; the config says num_spks "
            f"{num_spks} at sample_rate {sample_rate}: pass --num_spks={declared[0]} --sample_rate={declared[1]} "
            "(with data to match)"
        )


# ==================================================================== building it
def _declared_modules(hparams: dict, source: ModelSource) -> dict[str, torch.nn.Module]:
    """encoder, masknet and decoder as the config declares them: in `modules:`, else as top-level keys."""
    declared = hparams.get("modules")
    if not isinstance(declared, dict) or not all(name in declared for name in MODULE_NAMES):
        declared = hparams
    missing = [name for name in MODULE_NAMES if not isinstance(declared.get(name), torch.nn.Module)]
    if missing:
        raise ModelFolderError(
            f"{source.description}: {HPARAMS_FILE} declares no {', '.join(missing)} module "
            "(expected `modules: {encoder: ..., masknet: ..., decoder: ...}`)"
        )
    return {name: declared[name] for name in MODULE_NAMES}


def _weight_files(hparams: dict, modules: dict[str, torch.nn.Module], source: ModelSource) -> dict[str, Path]:
    """The weight file of each module, as the config's pretrainer names it (SpeechBrain's rules, offline).

    A pretrainer loadable `<key>` is collected from `paths[<key>]` when given (a file here, else its file name
    looked up in the folder, as a hub path would be), otherwise from `<folder>/<key>.ckpt`. Without a pretrainer
    (or a module it does not list), `<folder>/<module name>.ckpt`.
    """
    pretrainer = hparams.get("pretrainer")
    loadables = getattr(pretrainer, "loadables", None) or {}
    paths = getattr(pretrainer, "paths", None) or {}
    files = {}
    for name, module in modules.items():
        key = next((key for key, loadable in loadables.items() if loadable is module), name)
        if key in paths:
            given = Path(str(paths[key]))
            candidates = [given, source.weights_dir / given, source.weights_dir / PurePosixPath(str(paths[key])).name]
        else:
            candidates = [source.weights_dir / f"{key}.ckpt"]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise ModelFolderError(f"{source.description}: no weights for the {name}: {candidates[-1]} not found")
        files[name] = found
    return files


def build_model(source: ModelSource, fast: bool = True) -> Model:
    """Build the source's modules and load their weights, strictly: weights that do not fit are an error.

    With `fast`, SpeechBrain's classes that the project computes faster are built as the project's (same weights,
    `speechsep.models.speechbrain_classes`); without it, the classes the config names.
    """
    try:
        hparams = load_hyperpyyaml(with_our_classes(source.config) if fast else source.config)
    except Exception as err:  # any error building the modules: the folder is unusable, say why in one line
        raise ModelFolderError(f"{source.description}: cannot build the model ({first_line(err)})") from None
    missing = [key for key in ("num_spks", "sample_rate") if key not in hparams]
    if missing:
        raise ModelFolderError(f"{source.description}: {HPARAMS_FILE} lacks {', '.join(missing)}")
    modules = _declared_modules(hparams, source)
    for name, path in _weight_files(hparams, modules, source).items():
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
            modules[name].load_state_dict(state_dict)
        except Exception as err:
            raise ModelFolderError(f"{path}: cannot load into the {name} ({first_line(err)})") from None
    num_spks, sample_rate = _check_declared_format(modules, hparams, source)
    return Model(modules, num_spks, sample_rate, hparams)


# Long enough for every mask network's chunking, short enough to cost nothing next to loading the weights.
PROBE_SAMPLES = 2000


def _check_declared_format(modules: dict[str, torch.nn.Module], hparams: dict, source: ModelSource) -> tuple[int, int]:
    """The folder's `num_spks` and `sample_rate`, once they are whole numbers and `num_spks` is the number of
    masks its mask network makes: a smaller count would drop a speaker silently, a larger one crash."""
    declared = {key: hparams[key] for key in ("num_spks", "sample_rate")}
    for key, value in declared.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelFolderError(
                f"{source.description}: {HPARAMS_FILE} has {key}: {value!r}; expected a whole number"
            )
    training = {name: module.training for name, module in modules.items()}
    try:
        with torch.no_grad():
            for module in modules.values():
                module.eval()
            masks = modules["masknet"](modules["encoder"](torch.zeros(1, PROBE_SAMPLES)))
    except Exception as err:
        raise ModelFolderError(f"{source.description}: the model cannot separate ({first_line(err)})") from None
    finally:
        for name, module in modules.items():
            module.train(training[name])
    if masks.shape[0] != declared["num_spks"]:
        raise ModelFolderError(
            f"{source.description}: {HPARAMS_FILE} says num_spks: {declared['num_spks']}, but its mask network "
            f"makes {masks.shape[0]} masks: set num_spks: {masks.shape[0]}"
        )
    return declared["num_spks"], declared["sample_rate"]


def build_separator(source: ModelSource, device: str = "cpu") -> SepformerSeparation:
    """SpeechBrain's `SepformerSeparation` (any encoder/masknet/decoder model) with the source's weights."""
    model = build_model(source)
    hparams = {**model.hparams, "num_spks": model.num_spks, "sample_rate": model.sample_rate}
    return SepformerSeparation(modules=model.modules, hparams=hparams, run_opts={"device": device})


def load_separator(model_dir: str | Path, device: str = "cpu") -> SepformerSeparation:
    """`build_separator(find_model(model_dir))`: any model folder, ready to separate."""
    source = find_model(model_dir)
    separator = build_separator(source, device)
    hparams = separator.hparams
    logger.info(f"Model: {source.description}, {hparams.num_spks} speakers at {hparams.sample_rate} Hz")
    return separator


# ==================================================================== initialising a training run from it
def _first_mismatch(name: str, folder_state: dict, config_state: dict) -> str | None:
    """The first key or shape in which a module's weights from the folder and from the config differ."""
    for key, tensor in config_state.items():
        if key not in folder_state:
            return f"the config's {name} has '{key}', the folder's does not"
        if tuple(folder_state[key].shape) != tuple(tensor.shape):
            return (
                f"{name} '{key}' has shape {list(folder_state[key].shape)} in the folder, "
                f"{list(tensor.shape)} in the config"
            )
    extra = next((key for key in folder_state if key not in config_state), None)
    if extra is not None:
        return f"the folder's {name} has '{extra}', the config's does not"
    return None


def load_pretrained(modules: dict[str, torch.nn.Module], model_dir: str | Path, num_spks: int, sample_rate: int) -> str:
    """Copy a model folder's encoder, masknet and decoder weights into `modules` (a config's, same architecture);
    the folder's description, for the log. A ModelFolderError names the speaker count, sample rate, first weight
    key / shape that differs, or masks that differ with the same weights."""
    source = find_model(model_dir)
    check_format(source, num_spks, sample_rate)
    model = build_model(source, fast=False)
    states = {name: model.modules[name].state_dict() for name in MODULE_NAMES}
    for name in MODULE_NAMES:
        mismatch = _first_mismatch(name, states[name], modules[name].state_dict())
        if mismatch:
            raise ModelFolderError(f"{source.description} does not match the config's architecture: {mismatch}")
    for name in MODULE_NAMES:
        modules[name].load_state_dict(states[name])
    probe = torch.randn(1, sample_rate, generator=torch.Generator().manual_seed(0))  # one second
    if not torch.allclose(_masks(modules, probe), _masks(model.modules, probe), rtol=1e-3, atol=1e-4):
        raise ModelFolderError(
            f"{source.description} does not match the config's architecture: with the same weights its mask network "
            f"computes other masks (e.g. another Conv-TasNet norm_type or causal): compare its {HPARAMS_FILE}"
        )
    return source.description


def _masks(modules: dict[str, torch.nn.Module], mixture: torch.Tensor) -> torch.Tensor:
    """The mask network's output for `mixture` [batch, time], computed in eval mode without a gradient."""
    encoder, masknet = modules["encoder"], modules["masknet"]
    modes = encoder.training, masknet.training
    with torch.no_grad():
        masks = masknet.eval()(encoder.eval()(mixture))
    encoder.train(modes[0]), masknet.train(modes[1])
    return masks


# ==================================================================== exporting
def export_model(model_dir: str | Path, export_dir: str | Path, overwrite: bool = False) -> ModelSource:
    """Write `hyperparams.yaml`, the three `.ckpt` files that `SepformerSeparation.from_hparams` loads, and a
    model card (`README.md`).

    The config holds only the model (SpeechBrain classes), `num_spks` and `sample_rate`: no data paths,
    optimiser or hub references. The model is built and loaded first, so a broken folder is not exported.
    A non-empty `export_dir` is refused unless `overwrite`, and a training run's folder always is.
    """
    source = find_model(model_dir)
    from_run = source.weights_dir.resolve() != Path(model_dir).resolve()
    config = source.config if from_run else inference_config(source.config)  # a run's already is in our layout
    outside = classes_outside_speechbrain(ruamel.yaml.YAML().load(config))
    if outside:
        classes = ", ".join(sorted(set(outside)))
        raise ModelFolderError(f"{model_dir}: the model uses {classes}, which SpeechBrain alone cannot build")
    model = build_model(ModelSource(config, source.weights_dir, source.description), fast=False)
    export_dir = Path(export_dir)
    replacing = _check_export_target(export_dir, Path(model_dir), overwrite)
    export_dir.mkdir(parents=True, exist_ok=True)
    origin = Path(model_dir).resolve().name  # names only: an export holds no path of the machine it came from
    if from_run:
        origin += f", training checkpoint {source.weights_dir.name}"
    earlier_card = None
    if not from_run and _is_export(Path(model_dir)):  # a re-export: say what the first came from, keep its card
        origin += f" (an export of {source.config.splitlines()[0].removeprefix(f'{EXPORT_MARK} from ').rstrip('.')})"
        earlier_card = _read_card(Path(model_dir))
    header = (
        f"{EXPORT_MARK} from {origin}.\n"
        "# SepformerSeparation.from_hparams(source=<this folder>, savedir=<a folder>) loads it, and so does\n"
        "# `python separate.py --model <this folder> ...`.\n\n"
    )
    checkpoint = source.weights_dir.name if from_run else None
    card = model_card.render(
        Path(model_dir), origin, model.modules, model.num_spks, model.sample_rate, checkpoint, earlier_card
    )
    writers = {
        export_dir / f"{name}.ckpt": functools.partial(torch.save, model.modules[name].state_dict())
        for name in MODULE_NAMES
    }
    writers[export_dir / "README.md"] = text_content(card)
    writers[export_dir / HPARAMS_FILE] = text_content(header + config)  # last: it marks the folder an export
    write_files(writers, overwrite=replacing)
    logger.info(f"Exported {source.description} to {export_dir}")
    return ModelSource(header + config, export_dir, f"{export_dir} (exported model)")


def _check_export_target(export_dir: Path, model_dir: Path, overwrite: bool) -> bool:
    """Refuse to write where files of the user's or of a run would be replaced; returns whether an earlier
    export is replaced (with `overwrite`: a folder whose hyperparams.yaml begins with `EXPORT_MARK`)."""
    check_not_dangling(export_dir)
    if export_dir.exists() and not export_dir.is_dir():
        raise ModelFolderError(f"{export_dir} exists and is not a folder")
    if (export_dir / "save").is_dir() or export_dir.resolve() == model_dir.resolve():
        raise ModelFolderError(f"{export_dir} is a training run or the folder being exported: export to a new folder")
    if not export_dir.is_dir() or not any(export_dir.iterdir()):
        return False
    if not overwrite:
        raise ModelFolderError(f"{export_dir} is not empty: choose a new folder, or pass --overwrite to replace it")
    if not _is_export(export_dir):
        raise ModelFolderError(
            f"{export_dir} holds files that export.py did not write: --overwrite replaces only an earlier export; "
            "choose a new folder"
        )
    return True


def _read_card(folder: Path) -> str | None:
    """An export's model card (README.md), or None if it cannot be read."""
    try:
        return (folder / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _is_export(folder: Path) -> bool:
    """Whether a folder was written by `export_model` (its hyperparams.yaml begins with `EXPORT_MARK`)."""
    try:
        with open(folder / HPARAMS_FILE, encoding="utf-8") as file:
            return file.readline().startswith(EXPORT_MARK)
    except (OSError, UnicodeDecodeError):
        return False
