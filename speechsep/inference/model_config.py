"""A model's inference config: the self-contained HyperPyYAML text that declares its encoder, masknet and decoder.

`inference_config` reduces a run's record (or any model folder's `hyperparams.yaml`) to the model alone, written
with SpeechBrain's classes (`speechsep.models.speechbrain_classes`), so that an export needs SpeechBrain alone.
"""

import ruamel.yaml
from hyperpyyaml import resolve_references
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.tag import Tag

from speechsep.errors import RecipeError
from speechsep.models.speechbrain_classes import speechbrain_tag

HPARAMS_FILE = "hyperparams.yaml"
MODULE_NAMES = ("encoder", "masknet", "decoder")

INFERENCE_CONFIG = """\
sample_rate: {sample_rate}
num_spks: {num_spks}

{model}
modules:
    encoder: !ref <encoder>
    masknet: !ref <masknet>
    decoder: !ref <decoder>

# No `paths`: SepformerSeparation.from_hparams(source=<this folder>) collects <source>/<name>.ckpt, so the
# folder can be moved, copied or uploaded as it is.
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <encoder>
        masknet: !ref <masknet>
        decoder: !ref <decoder>
"""


class ModelFolderError(RecipeError):
    """A model folder that cannot be used; the message says why in one line."""


def _yaml() -> ruamel.yaml.YAML:
    yaml = ruamel.yaml.YAML()
    yaml.indent(mapping=4, sequence=4, offset=2)
    yaml.width = 120
    return yaml


def _tag(node) -> str | None:
    return getattr(getattr(node, "tag", None), "value", None)


def _portable_node(node):
    """A copy of a config node without comments or anchors, our classes written as SpeechBrain's."""
    tag = speechbrain_tag(_tag(node))
    if isinstance(node, TaggedScalar):  # a class built with its defaults
        return TaggedScalar(node.value, node.style, tag=tag)
    if isinstance(node, dict):
        copy = CommentedMap((key, _portable_node(value)) for key, value in node.items())
    elif isinstance(node, list):
        copy = CommentedSeq(_portable_node(value) for value in node)
    else:
        return node
    if tag:
        copy.yaml_set_ctag(Tag(suffix=tag))
    return copy


def classes_outside_speechbrain(node) -> list[str]:
    """Tags of `node` and its children that build objects from modules other than speechbrain and torch."""
    tag = _tag(node) or ""
    found = []
    kind, _, target = tag.partition(":")
    if kind in ("!new", "!apply", "!name") and not target.startswith(("speechbrain.", "torch.")):
        found.append(tag)
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        found.extend(classes_outside_speechbrain(child))
    return found


def inference_config(run_hparams: str) -> str:
    """The inference config of a run or a model folder: its encoder, masknet and decoder, `num_spks`, `sample_rate`.

    `run_hparams` is the text of a self-contained `hyperparams.yaml` (a run's record, an export, a published
    folder's), whose references are resolved here; the modules are those of its `modules:` map. Data paths,
    optimiser, scheduler, augmentation and logger are left out; our classes are written as SpeechBrain's. Raises
    ModelFolderError naming what is missing.
    """
    try:
        document = ruamel.yaml.YAML().load(resolve_references(run_hparams).getvalue())
    except Exception as err:  # not YAML, or a reference that does not resolve
        raise ModelFolderError(f"{HPARAMS_FILE} cannot be read ({first_line(err)})") from None
    modules = document.get("modules") if isinstance(document, dict) else None
    missing = [f"modules.{name}" for name in MODULE_NAMES if not isinstance(modules, dict) or name not in modules]
    missing += [key for key in ("num_spks", "sample_rate") if not isinstance(document, dict) or key not in document]
    if missing:
        raise ModelFolderError(f"{HPARAMS_FILE} lacks {', '.join(missing)}")
    model = CommentedMap((name, _portable_node(modules[name])) for name in MODULE_NAMES)
    for name in MODULE_NAMES:
        model.yaml_set_comment_before_after_key(name, before="\n" if name != "encoder" else None)
    stream = ruamel.yaml.compat.StringIO()
    _yaml().dump(model, stream)
    return INFERENCE_CONFIG.format(
        sample_rate=int(document["sample_rate"]),
        num_spks=int(document["num_spks"]),
        model=stream.getvalue(),
    )


def first_line(err: Exception) -> str:
    """An exception as one line: its type and the first line of its message."""
    message = str(err).strip()
    return f"{err.__class__.__name__}: {message.splitlines()[0]}" if message else err.__class__.__name__
