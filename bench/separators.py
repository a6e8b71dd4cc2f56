"""The models bench/bench_models.py and bench/bench_filterbank.py measure: SepFormer with SpeechBrain's
transformer block or ours, Conv-TasNet with SpeechBrain's mask network or ours, at the upstream recipes', tiny or
the demo's sizes, and every mask network config of hparams/ as train.py builds it."""

import tempfile
from collections import namedtuple
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.conv_tasnet import MaskNet as SpeechBrainMaskNet
from speechbrain.lobes.models.dual_path import (
    Decoder,
    Dual_Path_Model,
    Encoder,
    SBTransformerBlock,
)
from torch import nn

from speechsep.models.conv_tasnet import MaskNet
from speechsep.models.transformer import FastSBTransformerBlock
from speechsep.training.config import load_hparams

SAMPLE_RATE = 8000
NUM_SPKS = 2
BLOCKS = {"speechbrain": SBTransformerBlock, "ours": FastSBTransformerBlock}
# Conv-TasNet's mask network: SpeechBrain's, ours as the same network, ours as the demo trains it.
MASKNETS = {
    "speechbrain": lambda **sizes: SpeechBrainMaskNet(**sizes, norm_type="gLN", causal=False, mask_nonlinear="relu"),
    "ours": lambda **sizes: MaskNet(**sizes, activation="prelu", padding="reflect"),
    "ours, relu + zeros": lambda **sizes: MaskNet(**sizes, activation="relu", padding="zeros"),
}
# Every mask network config of hparams/, built as train.py builds it (its sizes, the speed-ups applied).
RECIPE_CONFIGS = ("sepformer", "convtasnet", "dprnn", "dptnet", "skim", "resepformer", "sepformer-conformerintra")
CONFIG_BLOCK = "recipe config"
HPARAMS = Path(__file__).resolve().parents[1] / "hparams"

# The encoder's channels (N) and kernel size (L), then the mask network's sizes, by SpeechBrain's names.
SepFormerSize = namedtuple(
    "SepFormerSize", "encoder_channels kernel_size num_blocks num_layers d_model nhead d_ffn chunk_size"
)
ConvTasNetSize = namedtuple("ConvTasNetSize", "encoder_channels kernel_size B H P X R")

# The upstream WSJ0-2mix recipes' sizes (SpeechBrain's sepformer.yaml / convtasnet.yaml), and tiny ones for --quick.
FULL_SIZES = {
    "sepformer": SepFormerSize(256, 16, num_blocks=2, num_layers=8, d_model=256, nhead=8, d_ffn=1024, chunk_size=250),
    "convtasnet": ConvTasNetSize(256, 16, B=256, H=512, P=3, X=6, R=4),
}
TINY_SIZES = {
    "sepformer": SepFormerSize(32, 16, num_blocks=1, num_layers=1, d_model=32, nhead=4, d_ffn=64, chunk_size=50),
    "convtasnet": ConvTasNetSize(32, 16, B=32, H=64, P=3, X=2, R=1),
}


class MaskingSeparator(nn.Module):
    """Encoder -> one mask per speaker -> decoder, as SpeechBrain's separation recipes wire them."""

    def __init__(self, encoder: nn.Module, masknet: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.masknet = masknet
        self.decoder = decoder

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """mixture [batch, time] -> est_sources [batch, time, num_spks]."""
        mixture_w = self.encoder(mixture)  # [batch, N, frames]
        est_masks = self.masknet(mixture_w)  # [num_spks, batch, N, frames]
        est_sources = torch.stack([self.decoder(mixture_w * mask) for mask in est_masks], dim=-1)
        missing = mixture.shape[1] - est_sources.shape[1]
        if missing > 0:
            return F.pad(est_sources, (0, 0, 0, missing))
        return est_sources[:, : mixture.shape[1]]


DemoConfig = namedtuple("DemoConfig", "sizes batch seconds")


@lru_cache
def demo_config() -> DemoConfig:
    """`hparams/demo.yaml`'s Conv-TasNet sizes and training batch (mixtures, seconds per crop), read from the config."""
    with tempfile.TemporaryDirectory() as folder:
        hparams = load_hparams(HPARAMS / "demo.yaml", {"data_folder": folder, "output_folder": folder})
    sizes = ConvTasNetSize(hparams["N_encoder_out"], hparams["kernel_size"], *(hparams[key] for key in "BHPXR"))
    return DemoConfig(sizes, hparams["batch_size"], hparams["training_signal_len"] / hparams["sample_rate"])


def separator_from_config(config: str) -> MaskingSeparator:
    """The encoder, mask network and decoder of `hparams/<config>.yaml` at its sizes, as train.py builds them."""
    with tempfile.TemporaryDirectory() as folder:
        hparams = load_hparams(HPARAMS / f"{config}.yaml", {"data_folder": folder, "output_folder": folder})
    return MaskingSeparator(hparams["modules"]["encoder"], hparams["modules"]["masknet"], hparams["modules"]["decoder"])


def build_separator(model: str, block: str, quick: bool, demo: bool = False) -> MaskingSeparator:
    """SepFormer (with the given transformer block) or ConvTasNet (with the given mask network), at upstream,
    tiny or (ConvTasNet) demo sizes; with block CONFIG_BLOCK, the config `model` of hparams/."""
    if block == CONFIG_BLOCK:
        return separator_from_config(model)
    sizes = demo_config().sizes if demo else (TINY_SIZES if quick else FULL_SIZES)[model]
    encoder_channels, kernel_size = sizes.encoder_channels, sizes.kernel_size
    if model == "sepformer":
        block_kwargs = dict(
            num_layers=sizes.num_layers,
            d_model=sizes.d_model,
            nhead=sizes.nhead,
            d_ffn=sizes.d_ffn,
            dropout=0.0,
            use_positional_encoding=True,
            norm_before=True,
        )
        masknet = Dual_Path_Model(
            in_channels=encoder_channels,
            out_channels=sizes.d_model,
            intra_model=BLOCKS[block](**block_kwargs),
            inter_model=BLOCKS[block](**block_kwargs),
            num_layers=sizes.num_blocks,
            norm="ln",
            K=sizes.chunk_size,
            num_spks=NUM_SPKS,
            skip_around_intra=True,
            linear_layer_after_inter_intra=False,
        )
    elif model == "convtasnet":
        masknet = MASKNETS[block](N=encoder_channels, B=sizes.B, H=sizes.H, P=sizes.P, X=sizes.X, R=sizes.R, C=NUM_SPKS)
    else:
        raise ValueError(f"unknown model {model!r}, expected 'sepformer' or 'convtasnet'")
    return MaskingSeparator(
        Encoder(kernel_size=kernel_size, out_channels=encoder_channels),
        masknet,
        Decoder(
            in_channels=encoder_channels, out_channels=1, kernel_size=kernel_size, stride=kernel_size // 2, bias=False
        ),
    )
