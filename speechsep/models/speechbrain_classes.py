"""Which class of this project stands for which of SpeechBrain's: the one table, read in both directions.

Each class of ours below subclasses or reimplements its SpeechBrain counterpart with the same constructor
arguments, parameters and state_dict keys, and computes the same function faster. The configs name ours, so
what a config names is what trains. An exported model folder names SpeechBrain's instead, so that it needs
SpeechBrain alone (`speechbrain_tag`). A folder that names SpeechBrain's classes (a model SpeechBrain publishes,
an export, a run whose config named SpeechBrain's) is built with ours (`with_our_classes`), where ours covers
the arguments it sets.
"""

import io

import ruamel.yaml
from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.tag import Tag

SPEECHBRAIN_CLASSES = {  # ours -> SpeechBrain's
    "speechsep.models.filterbank.Encoder": "speechbrain.lobes.models.dual_path.Encoder",
    "speechsep.models.filterbank.Decoder": "speechbrain.lobes.models.dual_path.Decoder",
    "speechsep.models.transformer.FastSBTransformerBlock": "speechbrain.lobes.models.dual_path.SBTransformerBlock",
    "speechsep.models.transformer.SBTransformerBlock_wnormandskip": (
        "speechbrain.lobes.models.resepformer.SBTransformerBlock_wnormandskip"
    ),
    "speechsep.models.conv_tasnet.FastMaskNet": "speechbrain.lobes.models.conv_tasnet.MaskNet",
}
OUR_CLASSES = {theirs: ours for ours, theirs in SPEECHBRAIN_CLASSES.items()}

# The argument values for which ours computes SpeechBrain's function (an argument left out takes SpeechBrain's
# default, which is covered). A SpeechBrain class given another value stays SpeechBrain's when loaded.
COVERED_ARGUMENTS = {
    "speechsep.models.conv_tasnet.FastMaskNet": {"norm_type": ("gLN",), "causal": (False,)},
    "speechsep.models.transformer.FastSBTransformerBlock": {"attention_type": ("regularMHA",)},
    "speechsep.models.transformer.SBTransformerBlock_wnormandskip": {"attention_type": ("regularMHA",)},
}
KINDS = ("!new:", "!name:")  # the HyperPyYAML tags that name a class


def _tag_of(node) -> str | None:
    return getattr(getattr(node, "tag", None), "value", None)


def _swap(tag: str | None, table: dict[str, str]) -> str | None:
    for kind in KINDS:
        if tag and tag.startswith(kind) and tag[len(kind) :] in table:
            return kind + table[tag[len(kind) :]]
    return None


def speechbrain_tag(tag: str | None) -> str | None:
    """A YAML tag with our class written as SpeechBrain's (`!new:speechsep...FastMaskNet` ->
    `!new:speechbrain...MaskNet`); any other tag as it is."""
    return _swap(tag, SPEECHBRAIN_CLASSES) or tag


def _covers(ours: str, node) -> bool:
    """Whether our class computes what SpeechBrain's does with the arguments of `node` (a mapping of keyword
    arguments; positional ones are not read, so a class with conditions is covered only by keywords)."""
    covered = COVERED_ARGUMENTS.get(ours, {})
    if not covered:
        return True
    if not isinstance(node, dict):
        return isinstance(node, TaggedScalar)  # no arguments: SpeechBrain's defaults
    return all(key not in node or _plain(node[key]) in values for key, values in covered.items())


def _plain(value):
    """A plain YAML value as Python's, or None for a tagged one (`!ref`), which cannot be judged here."""
    return None if _tag_of(value) else value


def _retag(node, new_tag) -> int:
    """Give `node` and its children the tag `new_tag(node)` where that is not None, in place; the count."""
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    changed = sum(_retag(child, new_tag) for child in children)
    tag = new_tag(node)
    if tag:
        node.yaml_set_ctag(Tag(suffix=tag))
        changed += 1
    return changed


def _rewritten(config: str, new_tag) -> str:
    yaml = ruamel.yaml.YAML()
    yaml.width = 4096  # no line folded: the text stays as it was written
    document = yaml.load(config)
    if not _retag(document, new_tag):
        return config
    stream = io.StringIO()
    yaml.dump(document, stream)
    return stream.getvalue()


def with_our_classes(config: str) -> str:
    """A HyperPyYAML config text whose SpeechBrain classes are written as ours, where ours covers their arguments;
    everything else (references, comments, other classes) as it was."""

    def ours(node):
        tag = _swap(_tag_of(node), OUR_CLASSES)
        return tag if tag and _covers(tag.partition(":")[2], node) else None

    return _rewritten(config, ours)


def with_speechbrain_classes(config: str, ours: tuple[str, ...] = tuple(SPEECHBRAIN_CLASSES)) -> str:
    """A HyperPyYAML config text whose classes of ours (those named in `ours`, by default all) are written as
    SpeechBrain's: the same model, with the same weights, computed by SpeechBrain."""
    return _rewritten(config, lambda node: _swap(_tag_of(node), {name: SPEECHBRAIN_CLASSES[name] for name in ours}))
