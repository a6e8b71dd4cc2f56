"""FastSBTransformerBlock (and RE-SepFormer's SBTransformerBlock_wnormandskip) must be SpeechBrain's block with
faster attention: same parameters and checkpoints, same outputs and gradients (up to float rounding)."""

import copy
import logging

import pytest
import torch
from speechbrain.lobes.models import resepformer
from speechbrain.lobes.models.dual_path import (
    Dual_Path_Model,
    SBTransformerBlock,
    SepformerWrapper,
)
from speechbrain.nnet.attention import MultiheadAttention

from speechsep.models import transformer
from speechsep.models.transformer import (
    FastSBTransformerBlock,
    PositionwiseFeedForward,
    SDPAMultiheadAttention,
    fused_attention_pays,
    use_sdpa_attention,
)

D_MODEL = 16
NHEAD = 4
RTOL = 1e-5

BLOCK_CONFIGS = {
    "sepformer": dict(norm_before=True, use_positional_encoding=True),
    "post_norm": dict(norm_before=False, use_positional_encoding=False),
    "gelu": dict(norm_before=True, activation="gelu"),
    "kdim_vdim": dict(norm_before=True, kdim=D_MODEL, vdim=D_MODEL),
}


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """Max abs difference, relative to the largest expected magnitude, within RTOL."""
    scale = expected.abs().max().clamp_min(1e-12)
    error = ((actual - expected).abs().max() / scale).item()
    assert error <= RTOL, f"{name}: relative error {error:.2e} > {RTOL:.0e}"


def make_block_pair(dropout: float = 0.0, **config) -> tuple[SBTransformerBlock, FastSBTransformerBlock]:
    """SpeechBrain's block and ours, ours loaded from SpeechBrain's state_dict."""
    kwargs = dict(num_layers=2, d_model=D_MODEL, nhead=NHEAD, d_ffn=32, dropout=dropout)
    kwargs.update(config)
    torch.manual_seed(0)
    reference = SBTransformerBlock(**kwargs)
    torch.manual_seed(1)  # different init, so that loading the state_dict matters
    fast = FastSBTransformerBlock(**kwargs)
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def forward_and_backward(
    block: torch.nn.Module, x: torch.Tensor, projection: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Output, gradient w.r.t. the input and w.r.t. every parameter."""
    x = x.clone().requires_grad_(True)
    block.zero_grad()
    output = block(x)
    # A random projection: the sum of a LayerNorm output has a near-zero gradient.
    (output * projection).sum().backward()
    grads = {name: p.grad.clone() for name, p in block.named_parameters()}
    return output.detach(), x.grad, grads


def small_dual_path_model(block_class: type, seed: int) -> Dual_Path_Model:
    """A SepFormer masknet (Dual_Path_Model) with tiny dims, built with `block_class`."""
    torch.manual_seed(seed)
    block_kwargs = dict(
        num_layers=2,
        d_model=D_MODEL,
        nhead=NHEAD,
        d_ffn=32,
        dropout=0.0,
        use_positional_encoding=True,
        norm_before=True,
    )
    return Dual_Path_Model(
        in_channels=D_MODEL,
        out_channels=D_MODEL,
        intra_model=block_class(**block_kwargs),
        inter_model=block_class(**block_kwargs),
        num_layers=2,
        norm="ln",
        K=6,
        num_spks=2,
        skip_around_intra=True,
        linear_layer_after_inter_intra=False,
    )


@pytest.mark.parametrize("config", BLOCK_CONFIGS.values(), ids=BLOCK_CONFIGS.keys())
def test_block_state_dict_keys_and_shapes_match_speechbrain(config):
    reference, fast = make_block_pair(**config)
    expected = {name: value.shape for name, value in reference.state_dict().items()}
    actual = {name: value.shape for name, value in fast.state_dict().items()}
    assert actual == expected


def test_block_initialises_like_speechbrain_for_the_same_seed():
    torch.manual_seed(0)
    reference = SBTransformerBlock(2, D_MODEL, NHEAD, use_positional_encoding=True)
    torch.manual_seed(0)
    fast = FastSBTransformerBlock(2, D_MODEL, NHEAD, use_positional_encoding=True)
    for (name, expected), actual in zip(reference.state_dict().items(), fast.state_dict().values()):
        assert torch.equal(actual, expected), name


def test_block_uses_sdpa_attention_in_every_layer():
    _, fast = make_block_pair(**BLOCK_CONFIGS["sepformer"])
    assert all(isinstance(layer.self_att, SDPAMultiheadAttention) for layer in fast.mdl.layers)


@pytest.mark.parametrize("config", BLOCK_CONFIGS.values(), ids=BLOCK_CONFIGS.keys())
def test_block_output_matches_speechbrain_in_eval_mode(config):
    reference, fast = make_block_pair(dropout=0.1, **config)
    reference.eval()
    fast.eval()
    x = torch.randn(3, 12, D_MODEL)
    with torch.no_grad():
        assert_relative_close(fast(x), reference(x))


@pytest.mark.parametrize("config", BLOCK_CONFIGS.values(), ids=BLOCK_CONFIGS.keys())
def test_block_output_and_gradients_match_speechbrain_in_train_mode(config):
    reference, fast = make_block_pair(dropout=0.0, **config)
    x = torch.randn(3, 12, D_MODEL)
    projection = torch.randn(3, 12, D_MODEL)
    expected_out, expected_grad_x, expected_grads = forward_and_backward(reference, x, projection)
    out, grad_x, grads = forward_and_backward(fast, x, projection)
    assert_relative_close(out, expected_out, "output")
    assert_relative_close(grad_x, expected_grad_x, "input gradient")
    assert grads.keys() == expected_grads.keys()
    for name, expected in expected_grads.items():
        assert_relative_close(grads[name], expected, name)


def make_attention_pair(
    dropout: float = 0.0, kdim=None, vdim=None
) -> tuple[MultiheadAttention, SDPAMultiheadAttention]:
    """SpeechBrain's attention and ours, on copies of the same parameters."""
    torch.manual_seed(0)
    reference = MultiheadAttention(nhead=NHEAD, d_model=D_MODEL, dropout=dropout, kdim=kdim, vdim=vdim)
    return reference, SDPAMultiheadAttention(copy.deepcopy(reference.att))


MASKS = {
    "key_padding": lambda: dict(key_padding_mask=torch.tensor([[False] * 10, [False] * 7 + [True] * 3])),
    "causal_bool": lambda: dict(attn_mask=torch.ones(10, 10, dtype=torch.bool).triu(1)),
    "float": lambda: dict(attn_mask=torch.randn(10, 10)),
    "causal_and_padding": lambda: dict(
        attn_mask=torch.ones(10, 10, dtype=torch.bool).triu(1),
        key_padding_mask=torch.tensor([[False] * 6 + [True] * 4, [False] * 10]),
    ),
    "pos_embs": lambda: dict(pos_embs=torch.randn(10, 10)),
}


@pytest.mark.parametrize("make_masks", MASKS.values(), ids=MASKS.keys())
def test_attention_output_and_gradients_match_speechbrain_with_masks(make_masks):
    reference, fast = make_attention_pair()
    masks = make_masks()
    x = torch.randn(2, 10, D_MODEL)
    projection = torch.randn(2, 10, D_MODEL)
    results = []
    for attention in (reference, fast):
        query = x.clone().requires_grad_(True)
        output, _ = attention(query, query, query, **copy.deepcopy(masks))
        (output * projection).sum().backward()
        results.append((output.detach(), query.grad, attention.att.in_proj_weight.grad))
    for actual, expected, name in zip(results[1], results[0], ["output", "input grad", "in_proj grad"]):
        assert_relative_close(actual, expected, name)


def test_attention_matches_speechbrain_for_cross_attention_with_kdim_vdim():
    reference, fast = make_attention_pair(kdim=6, vdim=10)
    query, key, value = torch.randn(2, 5, D_MODEL), torch.randn(2, 9, 6), torch.randn(2, 9, 10)
    expected, _ = reference(query, key, value)
    output, weights = fast(query, key, value)
    assert weights is None
    assert_relative_close(output.detach(), expected.detach())


def test_attention_dropout_in_train_mode_has_speechbrain_distribution():
    reference, fast = make_attention_pair(dropout=0.3)
    # The same sequence repeated: every batch item draws its own dropout mask.
    x = torch.randn(1, 8, D_MODEL).expand(4000, -1, -1)
    torch.manual_seed(0)
    with torch.no_grad():
        expected, _ = reference(x, x, x)
        output, _ = fast(x, x, x)
    expected_std, std = expected.std(dim=0), output.std(dim=0)
    assert std.min() > 0, "no dropout applied"
    std_error = (std / expected_std - 1).abs().max().item()
    assert std_error < 0.1, f"std differs by {std_error:.0%}"
    mean_error = ((output.mean(dim=0) - expected.mean(dim=0)).abs() / expected_std).max().item()
    assert mean_error < 0.1, f"means differ by {mean_error:.2f} std"


def test_speechbrain_masknet_state_dict_loads_into_fast_masknet_with_same_output():
    reference = small_dual_path_model(SBTransformerBlock, seed=0).eval()
    fast = small_dual_path_model(FastSBTransformerBlock, seed=1).eval()
    incompatible = fast.load_state_dict(reference.state_dict())
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    mixture_w = torch.randn(2, D_MODEL, 40)  # [batch, channels, frames]
    with torch.no_grad():
        assert_relative_close(fast(mixture_w), reference(mixture_w))


def test_use_sdpa_attention_converts_sepformer_wrapper_in_place():
    torch.manual_seed(0)
    reference = SepformerWrapper(
        encoder_out_nchannels=D_MODEL,
        masknet_chunksize=6,
        intra_numlayers=1,
        inter_numlayers=1,
        intra_nhead=NHEAD,
        inter_nhead=NHEAD,
        intra_dffn=32,
        inter_dffn=32,
    ).eval()
    fast = copy.deepcopy(reference)
    assert use_sdpa_attention(fast) == 4  # 2 dual-path blocks x (1 intra + 1 inter layer)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    mixture = torch.randn(2, 160)  # [batch, time]
    with torch.no_grad():
        assert_relative_close(fast(mixture), reference(mixture))


def test_block_keeps_speechbrain_attention_for_other_attention_types(caplog):
    with caplog.at_level(logging.WARNING, logger="speechsep.models.transformer"):
        reference, fast = make_block_pair(attention_type="RoPEMHA")
    assert "RoPEMHA" in caplog.text
    assert type(fast.mdl.layers[0].self_att) is type(reference.mdl.layers[0].self_att)
    x = torch.randn(3, 12, D_MODEL)
    with torch.no_grad():
        assert_relative_close(fast(x), reference(x))


def test_fused_attention_is_skipped_only_for_bf16_training_on_the_cpu():
    x = torch.randn(2, 3)
    assert fused_attention_pays(x)
    assert not fused_attention_pays(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_attention_pays(x)
        with torch.inference_mode():  # no backward: the fused kernel is the faster one
            assert fused_attention_pays(x)
    with torch.no_grad():
        assert fused_attention_pays(x.bfloat16())


@pytest.mark.parametrize("gradients", [True, False], ids=["training", "inference"])
def test_block_under_cpu_bf16_autocast_matches_speechbrain(gradients):
    """The explicit path (training) and the fused one (inference) compute what SpeechBrain's block does, to bf16
    rounding."""
    reference, fast = make_block_pair(dropout=0.0)
    x = torch.randn(3, 12, D_MODEL)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(gradients):
        torch.testing.assert_close(fast(x), reference(x), rtol=0.02, atol=0.02)


def test_feed_forward_keeps_speechbrains_parameters_and_output():
    reference, fast = make_block_pair(dropout=0.0)
    layer = fast.mdl.layers[0]
    assert isinstance(layer.pos_ffn, PositionwiseFeedForward)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(3, 12, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(layer.pos_ffn(x), reference.mdl.layers[0].pos_ffn(x))


@pytest.mark.parametrize("causal", [False, True])
def test_resepformer_block_is_speechbrains_with_fused_attention(causal):
    kwargs = dict(num_layers=2, d_model=D_MODEL, nhead=NHEAD, d_ffn=32, dropout=0.0, use_positional_encoding=True)
    kwargs.update(norm_before=True, causal=causal)
    torch.manual_seed(0)
    reference = resepformer.SBTransformerBlock_wnormandskip(**kwargs).eval()
    torch.manual_seed(0)  # same seed, same initial weights
    fast = transformer.SBTransformerBlock_wnormandskip(**kwargs).eval()
    assert isinstance(fast, resepformer.SBTransformerBlock_wnormandskip)
    assert all(isinstance(layer.self_att, SDPAMultiheadAttention) for layer in fast.mdl.layers)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(fast.state_dict()[key], value) for key, value in reference.state_dict().items())
    x = torch.randn(3, 12, D_MODEL)
    with torch.no_grad():
        assert_relative_close(fast(x), reference(x))
