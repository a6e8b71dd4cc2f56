"""speechsep.models.filterbank: SpeechBrain's encoder and decoder computed as matrix products."""

import pytest
import torch
from speechbrain.lobes.models import dual_path

from speechsep.models.filterbank import Decoder, Encoder, use_fast_filterbank


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


def test_use_fast_filterbank_changes_only_speechbrain_encoders_and_decoders():
    torch.manual_seed(0)
    encoder = dual_path.Encoder(kernel_size=16, out_channels=8)
    decoder = dual_path.Decoder(in_channels=8, out_channels=1, kernel_size=16, stride=8, bias=False)
    other = torch.nn.Linear(2, 2)
    mixture = torch.randn(2, 800)
    with torch.no_grad():
        expected = decoder(encoder(mixture))

    assert use_fast_filterbank(encoder, decoder, other) == 2
    assert type(encoder) is Encoder and type(decoder) is Decoder and type(other) is torch.nn.Linear
    assert decoder._is_plain_overlap_add()
    with torch.no_grad():
        assert torch.allclose(decoder(encoder(mixture)), expected, atol=1e-5)
    assert use_fast_filterbank(encoder, decoder) == 0  # already ours
