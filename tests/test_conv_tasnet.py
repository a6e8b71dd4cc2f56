"""speechsep.conv_tasnet.MaskNet: SpeechBrain's Conv-TasNet mask network, channels-first."""

import pytest
import torch
from speechbrain.lobes.models.conv_tasnet import MaskNet as SpeechBrainMaskNet

from speechsep.conv_tasnet import MaskNet, from_speechbrain

SIZES = dict(N=16, B=8, H=12, P=3, X=3, R=2, C=2)


def speechbrain_masknet(seed=0, **overrides):
    torch.manual_seed(seed)
    sizes = {**SIZES, **overrides}
    masknet = SpeechBrainMaskNet(**sizes, norm_type="gLN", causal=False, mask_nonlinear="relu")
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
