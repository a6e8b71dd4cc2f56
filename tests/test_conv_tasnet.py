"""speechsep.models.conv_tasnet: SpeechBrain's Conv-TasNet mask network channels-first (FastMaskNet), and the
MaskNet variant the demo trains."""

import pytest
import torch
from speechbrain.lobes.models.conv_tasnet import MaskNet as SpeechBrainMaskNet
from torch import nn

from speechsep.errors import RecipeError
from speechsep.models.conv_tasnet import FastMaskNet, MaskNet, depthwise_conv, from_speechbrain

SIZES = dict(N=16, B=8, H=12, P=3, X=3, R=2, C=2)


def speechbrain_masknet(seed=0, mask_nonlinear="relu", **overrides):
    torch.manual_seed(seed)
    sizes = {**SIZES, **overrides}
    masknet = SpeechBrainMaskNet(**sizes, norm_type="gLN", causal=False, mask_nonlinear=mask_nonlinear)
    with torch.no_grad():  # move every parameter off its initial value so that each one matters
        for parameter in masknet.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return masknet


@pytest.mark.parametrize("sizes", [{}, dict(X=4, R=1, C=3), dict(P=5)])
def test_same_outputs_and_gradients_as_speechbrain(sizes):
    reference = speechbrain_masknet(**sizes)
    ours_sizes = {**SIZES, **sizes}
    ours = MaskNet(**ours_sizes, activation="prelu", padding="reflect")
    ours.load_state_dict(from_speechbrain(reference.state_dict(), X=ours_sizes["X"]))
    mixture_w = torch.rand(3, SIZES["N"], 70)

    expected, got = reference(mixture_w), ours(mixture_w)
    assert got.shape == expected.shape == (ours.C, 3, SIZES["N"], 70)
    assert torch.allclose(got, expected, atol=1e-5)

    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    renamed = from_speechbrain({n: p.grad for n, p in reference.named_parameters()}, X=ours_sizes["X"])
    for name, parameter in ours.named_parameters():
        assert torch.allclose(parameter.grad, renamed[name], atol=1e-4, rtol=1e-4), name


def test_zero_padding_keeps_the_number_of_frames():
    reference = speechbrain_masknet()
    zeros = MaskNet(**SIZES, activation="prelu", padding="zeros")
    zeros.load_state_dict(from_speechbrain(reference.state_dict(), X=SIZES["X"]))
    mixture_w = torch.rand(2, SIZES["N"], 200)
    out = zeros(mixture_w)
    assert out.shape == (2, 2, SIZES["N"], 200)
    assert not torch.allclose(out, reference(mixture_w), atol=1e-5)


@pytest.mark.parametrize("kernel_size, dilation", [(3, 1), (3, 8), (5, 3), (3, 30), (5, 12)])
def test_depthwise_conv_matches_the_zero_padded_conv(kernel_size, dilation):
    """Outputs and both gradients; dilations up to and past the 30 frames, where outer taps fall off."""
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, kernel_size, dilation=dilation, groups=6, bias=False, padding=dilation * (kernel_size // 2))
    x = torch.randn(2, 6, 30, requires_grad=True)
    grad_y = torch.randn(2, 6, 30)

    expected = conv(x)
    expected_grads = torch.autograd.grad(expected, (x, conv.weight), grad_y)
    got = depthwise_conv(x, conv)
    got_grads = torch.autograd.grad(got, (x, conv.weight), grad_y)

    assert torch.allclose(got, expected, atol=1e-6)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        assert got_grad.shape == expected_grad.shape
        assert torch.allclose(got_grad, expected_grad, atol=1e-5)


def test_depthwise_conv_gradients_are_exact():
    conv = nn.Conv1d(3, 3, 5, dilation=2, groups=3, bias=False, padding=4).double()
    x = torch.randn(2, 3, 11, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: depthwise_conv(x, conv), (x, conv.weight))


def test_depthwise_conv_under_autocast_runs_like_the_conv():
    """bf16 in and out as autocast runs conv1d; the fp32 weight still gets an fp32 gradient."""
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, 3, dilation=2, groups=6, bias=False, padding=2)
    x = torch.randn(2, 6, 30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = conv(x), depthwise_conv(x, conv)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert torch.allclose(got.float(), expected.float(), atol=0.05)
    got.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and conv.weight.grad.abs().sum() > 0


def test_relu_masknet_trains_and_masks_are_non_negative():
    torch.manual_seed(0)
    masknet = MaskNet(**SIZES, activation="relu", padding="zeros")
    masks = masknet(torch.rand(2, SIZES["N"], 40))
    assert (masks >= 0).all()
    masks.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in masknet.parameters())


def test_softmax_masks_sum_to_one_over_speakers():
    masks = MaskNet(**SIZES, mask_nonlinear="softmax")(torch.rand(2, SIZES["N"], 30))
    assert torch.allclose(masks.sum(dim=0), torch.ones(2, SIZES["N"], 30), atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(activation="gelu"), "activation"),
        (dict(padding="circular"), "padding"),
        (dict(mask_nonlinear="sigmoid"), "mask_nonlinear"),
        (dict(P=4), "odd"),
    ],
)
def test_bad_arguments_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        MaskNet(**{**SIZES, **bad})


def test_unknown_speechbrain_parameters_are_refused():
    state_dict = speechbrain_masknet().state_dict()
    state_dict["temporal_conv_net.temporalblock_0_0.layers.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="extra"):
        from_speechbrain(state_dict, X=SIZES["X"])


# ---------------------------------------------------------------- FastMaskNet: the recipe's Conv-TasNet mask network
@pytest.mark.parametrize("sizes", [{}, dict(X=4, R=1, C=3), dict(mask_nonlinear="softmax")])
def test_fast_masknet_is_speechbrains_network_with_speechbrains_checkpoints(sizes):
    reference = speechbrain_masknet(**sizes)
    ours = FastMaskNet(**{**SIZES, **sizes}, norm_type="gLN", causal=False)  # SpeechBrain's arguments
    ours.load_state_dict(reference.state_dict())  # SpeechBrain's checkpoint, as it is
    mixture_w = torch.rand(2, SIZES["N"], 60)
    with torch.no_grad():
        assert (ours(mixture_w) - reference(mixture_w)).abs().max() < 1e-5
    saved = ours.state_dict()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in reference.state_dict().items()}
    loaded = speechbrain_masknet(seed=1, **sizes)  # other weights, then ours' checkpoint
    loaded.load_state_dict(saved)
    with torch.no_grad():
        assert torch.equal(loaded(mixture_w), reference(mixture_w))
    assert list(nn.ModuleDict({"masknet": ours}).state_dict())[0] == "masknet.layer_norm.gamma"


@pytest.mark.parametrize("variant", [dict(norm_type="cLN", causal=False), dict(norm_type="gLN", causal=True)])
def test_variants_it_does_not_cover_are_refused_naming_speechbrains_class(variant):
    with pytest.raises(RecipeError, match="name speechbrain.lobes.models.conv_tasnet.MaskNet in the config"):
        FastMaskNet(**SIZES, **variant)


def test_train_py_trains_the_configs_masknet_and_checkpoints_speechbrains_layout(tmp_path):
    from tests.helpers import TINY_CONVTASNET, tiny_hparams

    hparams = tiny_hparams(tmp_path, "convtasnet.yaml")
    masknet = hparams["modules"]["masknet"]
    assert type(masknet) is FastMaskNet and masknet is hparams["MaskNet"]
    assert hparams["checkpointer"].recoverables["masknet"] is masknet
    hparams["checkpointer"].save_checkpoint(name="layout")
    saved = torch.load(next((tmp_path / "out" / "save").glob("CKPT+layout/masknet.ckpt")), weights_only=True)
    sizes = {key: TINY_CONVTASNET[key] for key in "BHPXR"}
    speechbrains = SpeechBrainMaskNet(N=TINY_CONVTASNET["N_encoder_out"], **sizes, C=hparams["num_spks"])
    assert saved.keys() == speechbrains.state_dict().keys()
    speechbrains.load_state_dict(saved)
