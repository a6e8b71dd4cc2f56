"""speechsep.models.filterbank: SpeechBrain's encoder and decoder computed as matrix products."""

import pytest
import torch
from speechbrain.lobes.models import dual_path

from speechsep.models.filterbank import Decoder, Encoder


def pair(ours_class, speechbrain_class, **kwargs):
    """(SpeechBrain's module, ours) with the same random weights."""
    torch.manual_seed(0)
    reference = speechbrain_class(**kwargs)
    ours = ours_class(**kwargs)
    ours.load_state_dict(reference.state_dict())  # same keys and shapes, or this raises
    return reference, ours


def assert_same_outputs_and_gradients(reference, ours, inputs):
    inputs = inputs.requires_grad_()
    expected = reference(inputs)
    expected_input_grad, *expected_grads = torch.autograd.grad(
        expected, [inputs, *reference.parameters()], torch.ones_like(expected), allow_unused=True
    )
    got = ours(inputs)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)
    got_input_grad, *got_grads = torch.autograd.grad(
        got, [inputs, *ours.parameters()], torch.ones_like(got), allow_unused=True
    )
    for got_grad, expected_grad in zip([got_input_grad, *got_grads], [expected_input_grad, *expected_grads]):
        assert torch.allclose(got_grad, expected_grad, atol=1e-4, rtol=1e-4)


# (kernel, channels, batch, samples): the demo's and the recipes' sizes, a batch of one, lengths that leave
# samples after the last whole frame, the smallest kernel.
SIZES = [(64, 32, 3, 2000), (16, 24, 1, 517), (2, 8, 2, 101), (6, 8, 2, 50)]


@pytest.mark.parametrize("kernel, channels, batch, samples", SIZES)
def test_encoder_matches_speechbrain(kernel, channels, batch, samples):
    reference, ours = pair(Encoder, dual_path.Encoder, kernel_size=kernel, out_channels=channels)
    assert_same_outputs_and_gradients(reference, ours, torch.randn(batch, samples))


@pytest.mark.parametrize("kernel, channels, batch, samples", SIZES)
def test_decoder_matches_speechbrain(kernel, channels, batch, samples):
    kwargs = dict(in_channels=channels, out_channels=1, kernel_size=kernel, stride=kernel // 2, bias=False)
    reference, ours = pair(Decoder, dual_path.Decoder, **kwargs)
    assert ours._is_plain_overlap_add()
    frames = (samples - kernel) // (kernel // 2) + 1
    assert_same_outputs_and_gradients(reference, ours, torch.randn(batch, channels, frames))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=5, stride=2), dict(kernel_size=4, stride=2, bias=True)])
def test_decoder_falls_back_to_the_transposed_convolution(kwargs):
    """Settings overlap-add does not cover (a kernel that is not whole hops, a bias) give SpeechBrain's output."""
    reference, ours = pair(Decoder, dual_path.Decoder, **{"bias": False, **kwargs}, in_channels=6, out_channels=1)
    assert not ours._is_plain_overlap_add()
    assert_same_outputs_and_gradients(reference, ours, torch.randn(2, 6, 30))


def test_ours_are_speechbrains_classes_built_with_the_same_weights():
    """Same constructor and initialisation: a config that names ours instead of SpeechBrain's (or the reverse)
    builds the same model from the same seed, and the recipe's decoder takes the overlap-add path."""
    kwargs = dict(in_channels=8, out_channels=1, kernel_size=16, stride=8, bias=False)
    for ours_class, speechbrain_class, arguments in [
        (Encoder, dual_path.Encoder, dict(kernel_size=16, out_channels=8)),
        (Decoder, dual_path.Decoder, kwargs),
    ]:
        assert issubclass(ours_class, speechbrain_class)
        torch.manual_seed(0)
        expected = speechbrain_class(**arguments).state_dict()
        torch.manual_seed(0)
        ours = ours_class(**arguments)
        assert ours.state_dict().keys() == expected.keys()
        assert all(torch.equal(ours.state_dict()[key], value) for key, value in expected.items())
    assert Decoder(**kwargs)._is_plain_overlap_add()
