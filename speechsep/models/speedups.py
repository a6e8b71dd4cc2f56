"""SpeechBrain's separation modules made faster where the result is the same.

Configs and exported folders name SpeechBrain's own classes; training (`train.py`) and inference (model
folders) call `speed_up` once the modules are built. Only the computation changes: parameters, state_dict keys
and outputs (up to float rounding) stay SpeechBrain's, so checkpoints load in either direction.
"""

import torch

from speechsep.models.conv_tasnet import SpeechBrainLayoutMaskNet
from speechsep.models.filterbank import use_fast_filterbank
from speechsep.models.transformer import use_sdpa_attention


def speed_up(modules: dict[str, torch.nn.Module], fast_attention: bool = True) -> None:
    """Fused attention in the mask network's regular transformer layers (if `fast_attention`), Conv-TasNet's
    mask network computed channels-first, and the matrix-product encoder and decoder; modules these do not
    apply to are left as they are.

    The encoder, decoder and attention layers change in place; a Conv-TasNet mask network is replaced by another
    object (`modules["masknet"]`), so whoever holds the old one (a checkpointer) must be told.
    """
    if fast_attention:
        use_sdpa_attention(modules["masknet"])
    channels_first = SpeechBrainLayoutMaskNet.from_module(modules["masknet"])
    if channels_first is not None:
        modules["masknet"] = channels_first
    use_fast_filterbank(modules["encoder"], modules["decoder"])
