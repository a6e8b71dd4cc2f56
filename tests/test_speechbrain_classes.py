"""speechsep.models.speechbrain_classes: the one table of our classes and SpeechBrain's, read both ways."""

import importlib
import inspect

import pytest
import ruamel.yaml

from speechsep.models.speechbrain_classes import (
    SPEECHBRAIN_CLASSES,
    speechbrain_tag,
    with_our_classes,
    with_speechbrain_classes,
)
from tests.helpers import REPO

CONFIGS = sorted(path.name for path in (REPO / "hparams").glob("*.yaml"))
SB_MASKNET = "!new:speechbrain.lobes.models.conv_tasnet.MaskNet"


def load_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def arguments(cls: type) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()]


@pytest.mark.parametrize("ours", sorted(SPEECHBRAIN_CLASSES))
def test_each_class_of_ours_takes_speechbrains_arguments(ours):
    ours_class, theirs_class = load_class(ours), load_class(SPEECHBRAIN_CLASSES[ours])
    if [name for name, _ in arguments(ours_class)] == ["self", "args", "kwargs"]:
        assert issubclass(ours_class, theirs_class)  # passes SpeechBrain's arguments on as they are
    else:
        assert arguments(ours_class) == arguments(theirs_class)


def tags(text: str) -> list[str]:
    """The tags of a YAML text, in document order."""
    found = []

    def walk(node):
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag:
            found.append(tag)
        for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else []:
            walk(child)

    walk(ruamel.yaml.YAML().load(text))
    return found


@pytest.mark.parametrize("config", CONFIGS)
def test_a_config_written_with_speechbrains_classes_reads_back_as_ours(config):
    text = (REPO / "hparams" / config).read_text()
    portable = with_speechbrain_classes(text)
    assert not [tag for tag in tags(portable) if tag.partition(":")[2] in SPEECHBRAIN_CLASSES]
    assert tags(with_our_classes(portable)) == tags(text)


@pytest.mark.parametrize(
    "arguments",
    ["{norm_type: cLN}", "{causal: true}", "{N: 16, norm_type: !ref <norm>}", "[16, 8, 16, 3, 2, 1, 2, cLN]"],
)
def test_arguments_ours_does_not_cover_keep_speechbrains_class(arguments):
    assert tags(with_our_classes(f"masknet: {SB_MASKNET} {arguments}\n"))[0] == SB_MASKNET


def test_other_attention_kinds_keep_speechbrains_block():
    block = "!new:speechbrain.lobes.models.dual_path.SBTransformerBlock"
    text = f"a: {block} {{num_layers: 1, d_model: 8, nhead: 2, attention_type: RoPEMHA}}\n"
    assert tags(with_our_classes(text))[0] == block


def test_classes_without_arguments_and_name_tags_are_converted_too():
    text = "a: !new:speechbrain.lobes.models.dual_path.Encoder\nb: !name:speechbrain.lobes.models.dual_path.Decoder\n"
    assert tags(with_our_classes(text)) == [
        "!new:speechsep.models.filterbank.Encoder",
        "!name:speechsep.models.filterbank.Decoder",
    ]


def test_other_tags_and_text_are_left_as_they_are():
    text = "# a comment\nx: !ref <y>\ny: !new:torch.nn.Linear {in_features: 2, out_features: 2}\n"
    assert with_our_classes(text) == text == with_speechbrain_classes(text)
    assert speechbrain_tag("!new:torch.nn.Linear") == "!new:torch.nn.Linear" and speechbrain_tag(None) is None
    assert speechbrain_tag("!new:speechsep.models.conv_tasnet.FastMaskNet") == SB_MASKNET
