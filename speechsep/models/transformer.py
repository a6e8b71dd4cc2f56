"""SpeechBrain's transformer blocks with attention that never materialises its weights.

SpeechBrain's `MultiheadAttention` asks `torch.nn.MultiheadAttention` for its attention weights on every call,
which forces PyTorch's unfused path: every `[time, time]` attention matrix is computed, stored for the backward
pass and averaged over heads, only for the block to throw it away. Asking for no weights lets PyTorch use
`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels) with the same parameters.

`FastSBTransformerBlock` (SepFormer's block, `dual_path.SBTransformerBlock`) and
`SBTransformerBlock_wnormandskip` (RE-SepFormer's, `resepformer.SBTransformerBlock_wnormandskip`) are
subclasses of SpeechBrain's: same constructor, parameters and state_dict keys (SpeechBrain's checkpoints load
unchanged), same outputs up to float rounding. The configs name them; naming SpeechBrain's class instead runs
SpeechBrain's attention with the same weights.
"""

import logging

import torch
from speechbrain.lobes.models import resepformer
from speechbrain.lobes.models.dual_path import SBTransformerBlock
from speechbrain.lobes.models.transformer.Transformer import TransformerEncoderLayer
from speechbrain.nnet.attention import MultiheadAttention, PositionalwiseFeedForward
from torch import nn

logger = logging.getLogger(__name__)


class SDPAMultiheadAttention(nn.Module):
    """SpeechBrain's `MultiheadAttention`, computed without returning attention weights.

    It wraps the `torch.nn.MultiheadAttention` that SpeechBrain's module holds as `att`, so
    parameter names (`att.in_proj_weight`, `att.out_proj.weight`, ...) and values are
    unchanged. Masks, `pos_embs`, `kdim`/`vdim` and dropout behave as in SpeechBrain; attention
    dropout is drawn by the attention kernel instead, so with dropout > 0 in train mode the
    outputs follow the same distribution but not the same random draws.

    Arguments
    ---------
    att : torch.nn.MultiheadAttention
        Sequence-first attention module holding the parameters (`batch_first=False`).

    Example
    -------
    >>> sb_attention = MultiheadAttention(nhead=4, d_model=16)
    >>> attention = SDPAMultiheadAttention(sb_attention.att)
    >>> x = torch.rand(2, 10, 16)
    >>> output, weights = attention(x, x, x)
    >>> output.shape, weights
    (torch.Size([2, 10, 16]), None)
    """

    def __init__(self, att: nn.MultiheadAttention):
        super().__init__()
        if att.batch_first:
            raise ValueError(
                "SDPAMultiheadAttention expects the sequence-first torch.nn.MultiheadAttention "
                "that speechbrain.nnet.attention.MultiheadAttention builds, got batch_first=True"
            )
        self.att = att

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        pos_embs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """Attends `query` [batch, tgt_time, d_model] to `key`/`value` [batch, src_time, kdim/vdim].

        Masks follow `torch.nn.MultiheadAttention`; `pos_embs` is added to the attention
        logits like SpeechBrain does (through the additive mask). Returns the output
        [batch, tgt_time, d_model] and None in place of the attention weights, so that
        SpeechBrain's transformer layers, which unpack two values, keep working.
        """
        if pos_embs is not None:
            # Out of place: SpeechBrain's `attn_mask += pos_embs` edits the caller's mask.
            attn_mask = pos_embs if attn_mask is None else attn_mask + pos_embs

        # torch.nn.MultiheadAttention here is sequence-first: [time, batch, features]. Passing
        # the same transposed tensor for a self-attention lets torch do one packed projection.
        # Contiguous: a projection of a transposed tensor becomes a batched product with the weight copied for
        # every item of the batch (in bf16 on a CPU that copy cost more than the product).
        query_t = query.transpose(0, 1).contiguous()
        key_t = query_t if key is query else key.transpose(0, 1).contiguous()
        value_t = key_t if value is key else value.transpose(0, 1).contiguous()

        output, _ = self.att(
            query_t,
            key_t,
            value_t,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=not fused_attention_pays(query),
        )
        return output.transpose(0, 1), None


def fused_attention_pays(query: torch.Tensor) -> bool:
    """False where PyTorch's fused attention is measured slower than the explicit path: a bf16 training step
    on the CPU (its backward), where the explicit path (the one SpeechBrain takes, weights dropped) is used.
    Without gradients (inference, evaluation) the fused kernel is the faster one in bf16 too; bench/RESULTS.md.
    """
    if query.device.type != "cpu" or not torch.is_grad_enabled():
        return True
    bf16 = query.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    return not bf16


class PositionwiseFeedForward(nn.Module):
    """SpeechBrain's `PositionalwiseFeedForward` without its two transposes: the same `ffn` (parameters, state
    dict keys), applied to [batch, time, features] as it comes. A position-wise network gives the same output
    either way; a linear layer on a transposed input is a batched product with its weight copied per item."""

    def __init__(self, ffn: nn.Sequential):
        super().__init__()
        self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(x)


def use_sdpa_attention(model: nn.Module) -> int:
    """Replaces, in place, the self-attention of every SpeechBrain transformer encoder layer
    in `model` by `SDPAMultiheadAttention`, and its feed-forward network by `PositionwiseFeedForward`,
    keeping their parameters. The fast blocks call it on their own layers as they are built.

    Only layers using SpeechBrain's regular `MultiheadAttention` ("regularMHA") are changed;
    other attention types (RelPosMHAXL, RoPEMHA, hypermixing) are left as they are. State-dict
    keys do not change. Returns the number of layers changed.

    Example
    -------
    >>> from speechbrain.lobes.models.dual_path import SepformerWrapper
    >>> separator = SepformerWrapper(intra_numlayers=1, inter_numlayers=1)
    >>> use_sdpa_attention(separator)
    4
    """
    num_replaced = 0
    for module in model.modules():
        if isinstance(module, TransformerEncoderLayer) and isinstance(module.self_att, MultiheadAttention):
            module.self_att = SDPAMultiheadAttention(module.self_att.att)
            if isinstance(module.pos_ffn, PositionalwiseFeedForward):
                module.pos_ffn = PositionwiseFeedForward(module.pos_ffn.ffn)
            num_replaced += 1
    return num_replaced


class FastSBTransformerBlock(SBTransformerBlock):
    """`SBTransformerBlock` whose attention never materialises its weights.

    Same arguments, defaults, parameters, state_dict keys and initialisation (for a given
    random seed) as `speechbrain.lobes.models.dual_path.SBTransformerBlock`; outputs match up to
    float rounding. Only `attention_type="regularMHA"` (SepFormer's) is accelerated: other
    attention types keep SpeechBrain's implementation, with a warning.

    Arguments
    ---------
    num_layers : int
        Number of transformer layers.
    d_model : int
        Dimensionality of the representation.
    nhead : int
        Number of attention heads.
    d_ffn : int
        Hidden size of the position-wise feed-forward network.
    input_shape : tuple, optional
        Shape of input (unused by SpeechBrain's encoder, kept for compatibility).
    kdim : int, optional
        Dimension of the key.
    vdim : int, optional
        Dimension of the value.
    dropout : float
        Dropout rate.
    activation : str
        "relu" or "gelu".
    use_positional_encoding : bool
        Add sinusoidal positional encodings to the input.
    norm_before : bool
        Pre-norm (True, SepFormer's choice) or post-norm transformer layers.
    attention_type : str
        Type of attention, "regularMHA" by default.

    Example
    -------
    >>> block = FastSBTransformerBlock(1, 64, 8)
    >>> x = torch.randn(10, 100, 64)
    >>> block(x).shape
    torch.Size([10, 100, 64])
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        nhead: int,
        d_ffn: int = 2048,
        input_shape: tuple | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.1,
        activation: str = "relu",
        use_positional_encoding: bool = False,
        norm_before: bool = False,
        attention_type: str = "regularMHA",
    ):
        super().__init__(
            num_layers=num_layers,
            d_model=d_model,
            nhead=nhead,
            d_ffn=d_ffn,
            input_shape=input_shape,
            kdim=kdim,
            vdim=vdim,
            dropout=dropout,
            activation=activation,
            use_positional_encoding=use_positional_encoding,
            norm_before=norm_before,
            attention_type=attention_type,
        )
        _fuse_attention(self, attention_type)


class SBTransformerBlock_wnormandskip(resepformer.SBTransformerBlock_wnormandskip):
    """`resepformer.SBTransformerBlock_wnormandskip` (RE-SepFormer's block) whose attention never materialises its
    weights; SpeechBrain's arguments, passed on as they are. Like `FastSBTransformerBlock`, only
    `attention_type="regularMHA"` is accelerated. It keeps SpeechBrain's class name because SpeechBrain's
    RE-SepFormer chooses how to call its segment blocks by that name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _fuse_attention(self, kwargs.get("attention_type", "regularMHA"))


def _fuse_attention(block: nn.Module, attention_type: str) -> None:
    """The fused attention in a SpeechBrain block's transformer layers (`block.mdl`); a warning where none has
    SpeechBrain's regular attention."""
    if use_sdpa_attention(block.mdl) == 0 and len(block.mdl.layers) > 0:
        logger.warning(
            "%s: attention_type=%r has no fused implementation, using SpeechBrain's (expected 'regularMHA' to be "
            "accelerated)",
            type(block).__name__,
            attention_type,
        )
