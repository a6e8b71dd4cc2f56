"""SpeechBrain model folders as SpeechBrain publishes them (small sizes, random weights), for the tests.

The layout of e.g. `speechbrain/sepformer-wsj02mix`: the modules under capitalised top-level keys, a
`modules:` map and a `pretrainer` whose loadables name the weight files `<key>.ckpt`. One config per mask
network class SpeechBrain ships for separation.
"""

from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml

DUAL_PATH = "speechbrain.lobes.models.dual_path"
RESEPFORMER = "speechbrain.lobes.models.resepformer"

HEADER = f"""\
sample_rate: 8000
num_spks: 2

Encoder: !new:{DUAL_PATH}.Encoder {{kernel_size: 16, out_channels: 16}}
Decoder: !new:{DUAL_PATH}.Decoder {{in_channels: 16, out_channels: 1, kernel_size: 16, stride: 8, bias: false}}
"""

DUAL_PATH_MODEL = f"""
MaskNet: !new:{DUAL_PATH}.Dual_Path_Model
    num_spks: !ref <num_spks>
    in_channels: 16
    out_channels: 16
    num_layers: 1
    K: 20
    intra_model: !ref <SBtfintra>
    inter_model: !ref <SBtfinter>
    norm: ln
    linear_layer_after_inter_intra: false
    skip_around_intra: true
"""

# The sizes of tests.helpers.TINY_SEPFORMER, so that hparams/sepformer.yaml with those overrides fine-tunes it.
SEPFORMER_BLOCK = (
    f"!new:{DUAL_PATH}.SBTransformerBlock {{num_layers: 1, d_model: 16, nhead: 2, d_ffn: 32, dropout: 0, "
    "use_positional_encoding: true, norm_before: true}"
)
BLOCKS = {
    "sepformer": SEPFORMER_BLOCK,
    "dprnn": f"!new:{DUAL_PATH}.SBRNNBlock {{input_size: 16, hidden_channels: 8, num_layers: 1, bidirectional: true}}",
    "dptnet": f"!new:{DUAL_PATH}.DPTNetBlock {{d_model: 16, nhead: 2, dim_feedforward: 32, dropout: 0}}",
    "sepformer-conformerintra": (
        f"!new:{DUAL_PATH}.SBConformerEncoderBlock {{num_layers: 1, d_model: 16, nhead: 2, d_ffn: 32, dropout: 0, "
        "kernel_size: 7}"
    ),
}

CONVTASNET = """
MaskNet: !new:speechbrain.lobes.models.conv_tasnet.MaskNet
    {N: 16, B: 8, H: 16, P: 3, X: 2, R: 1, C: !ref <num_spks>, norm_type: gLN, causal: false, mask_nonlinear: relu}
"""

RESOURCE_EFFICIENT = f"""
MaskNet: !new:{RESEPFORMER}.ResourceEfficientSeparator
    input_dim: 16
    num_spk: !ref <num_spks>
    causal: false
    unit: 16
    segment_size: 10
    layer: 1
    mem_type: {{mem_type}}
    seg_model: !ref <SBtfintra>
    mem_model: !ref <SBtfinter>
"""
RESEPFORMER_BLOCK = (
    f"!new:{RESEPFORMER}.SBTransformerBlock_wnormandskip {{num_layers: 1, d_model: 16, nhead: 2, d_ffn: 32, "
    "dropout: 0, use_positional_encoding: true, norm_before: true}"
)

PRETRAINER = """
modules:
    encoder: !ref <Encoder>
    decoder: !ref <Decoder>
    masknet: !ref <MaskNet>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <Encoder>
        masknet: !ref <MaskNet>
        decoder: !ref <Decoder>
"""


def published_config(kind: str) -> str:
    """The hyperparams.yaml of a published-layout folder of one model class."""
    if kind in BLOCKS:
        blocks = f"SBtfintra: {BLOCKS[kind]}\nSBtfinter: {BLOCKS['sepformer' if 'conformer' in kind else kind]}\n"
        return HEADER + blocks + DUAL_PATH_MODEL + PRETRAINER
    if kind == "convtasnet":
        return HEADER + CONVTASNET + PRETRAINER
    if kind == "resepformer":
        blocks = f"SBtfintra: {RESEPFORMER_BLOCK}\nSBtfinter: {RESEPFORMER_BLOCK}\n"
        return HEADER + blocks + RESOURCE_EFFICIENT.format(mem_type="av") + PRETRAINER
    if kind == "skim":
        blocks = (
            f"SBtfintra: !new:{RESEPFORMER}.SegLSTM {{input_size: 16, hidden_size: 16, bidirectional: true, "
            "norm_type: gln}\n"
            f"SBtfinter: !new:{RESEPFORMER}.MemLSTM {{hidden_size: 16, bidirectional: true, norm_type: gln, "
            "mem_type: hc}\n"
        )
        return HEADER + blocks + RESOURCE_EFFICIENT.format(mem_type="hc") + PRETRAINER
    raise ValueError(f"unknown model kind {kind!r}")


KINDS = ("sepformer", "dprnn", "dptnet", "sepformer-conformerintra", "convtasnet", "resepformer", "skim")


def write_published_folder(folder: Path, kind: str = "sepformer", seed: int = 0) -> Path:
    """A folder in SpeechBrain's published layout: hyperparams.yaml and encoder/masknet/decoder.ckpt."""
    config = published_config(kind)
    torch.manual_seed(seed)
    hparams = load_hyperpyyaml(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.yaml").write_text(config)
    for key, module in hparams["pretrainer"].loadables.items():
        with torch.no_grad():  # away from the initialisation, so that a module left unloaded shows
            for parameter in module.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        torch.save(module.state_dict(), folder / f"{key}.ckpt")
    return folder
