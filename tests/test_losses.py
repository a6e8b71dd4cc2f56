"""speechsep.training.losses: the training loss against SpeechBrain's, in float32 as it trains."""

import pytest
import torch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from speechsep.training.losses import pairwise_si_snr, pit_si_snr_loss


def estimates_at(noise_levels, time=4000, seed=0):
    """Two references and estimates: the swapped references plus noise at the given relative levels."""
    generator = torch.Generator().manual_seed(seed)
    sources = torch.randn(len(noise_levels), time, 2, generator=generator)
    noise = torch.randn(sources.shape, generator=generator)
    levels = torch.tensor(noise_levels).view(-1, 1, 1)
    return sources[..., [1, 0]] * 0.7 + levels * noise, sources


def test_float32_loss_and_gradient_match_speechbrain_in_float64():
    """From ~43 dB (where expanded energies in float32 lost ~0.1 dB) down to ~-13 dB, on float32 inputs."""
    est_sources, sources = estimates_at([0.005, 0.1, 1.0, 3.0])
    est_sources.requires_grad_(True)
    ours = pit_si_snr_loss(est_sources, sources)
    (ours_grad,) = torch.autograd.grad(ours.sum(), est_sources)

    reference = est_sources.detach().double().requires_grad_(True)
    expected = get_si_snr_with_pitwrapper(sources.double(), reference)
    (expected_grad,) = torch.autograd.grad(expected.sum(), reference)

    assert ours.dtype == ours_grad.dtype == torch.float32
    assert -ours[0] > 40 and -ours[-1] < -10
    assert torch.allclose(ours.double(), expected, atol=1e-4)
    for got, want in zip(ours_grad.double(), expected_grad):  # relative to each example's largest gradient
        assert (got - want).abs().max() < 1e-6 * want.abs().max()


def test_pairs_are_estimate_by_reference():
    est_sources, sources = estimates_at([0.1, 0.1])
    pairs = pairwise_si_snr(est_sources, sources)
    assert pairs.shape == (2, 2, 2)
    # estimate 0 is reference 1 plus noise
    assert (pairs[:, 0, 1] > 15).all() and (pairs[:, 0, 0] < 0).all()


def test_computed_in_float32_under_autocast():
    est_sources, sources = estimates_at([0.001])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pit_si_snr_loss(est_sources.bfloat16(), sources)
    assert loss.dtype == torch.float32
    assert -loss.item() > 40  # bf16 energies would cap it near 25 dB


def test_silent_estimate_scores_the_floor_not_nan():
    est_sources, sources = estimates_at([0.1])
    loss = pit_si_snr_loss(torch.zeros_like(est_sources), sources)
    assert loss.item() == pytest.approx(80.0, abs=1e-3)
