"""Training-time augmentation: every option reachable, and the mixture always rebuilt from the sources."""

import torch

from speechsep.data.augment import perturb_sources
from tests.helpers import make_batch, make_brain


def signals(brain, batch):
    mixture, sources, lengths, noise = brain.batch_signals(batch)
    return mixture, sources, lengths, noise


def test_speed_perturbation_rebuilds_the_mixture_from_the_perturbed_sources(tmp_path):
    brain = make_brain(tmp_path, use_speedperturb=True)
    brain.hparams.speed_perturb.speeds = [90]  # always a change, so the test can fail
    mixture, sources, lengths, noise = signals(brain, make_batch())
    new_mixture, new_sources, new_lengths = brain.augment(mixture, sources, lengths, noise)
    assert new_sources.shape[1] != sources.shape[1]
    torch.testing.assert_close(new_mixture, new_sources.sum(dim=-1))
    assert (new_lengths <= 1).all()


def test_noise_is_added_back_after_perturbing_the_sources(tmp_path):
    brain = make_brain(tmp_path, use_rand_shift=True, max_shift=100)
    mixture, sources, lengths, _ = signals(brain, make_batch())
    noise = 0.01 * torch.randn_like(mixture)
    new_mixture, new_sources, _ = brain.augment(mixture + noise, sources, lengths, noise)
    torch.testing.assert_close(new_mixture, new_sources.sum(dim=-1) + noise)


def test_random_shift_and_wavedrop_are_reachable_and_train(tmp_path):
    brain = make_brain(tmp_path, use_rand_shift=True, max_shift=400, use_wavedrop=True)
    mixture, sources, lengths, noise = signals(brain, make_batch())
    torch.manual_seed(0)
    new_mixture, new_sources, _ = brain.augment(mixture, sources, lengths, noise)
    assert not torch.equal(new_sources, sources)  # shifted
    assert not torch.allclose(new_mixture, new_sources.sum(dim=-1))  # chunks/frequencies dropped
    assert torch.isfinite(brain.fit_batch(make_batch()))


def test_perturbed_lengths_follow_the_longest_source_content():
    sources = torch.ones(2, 1000, 2)
    lengths = torch.tensor([1.0, 0.5])
    _, new_lengths = perturb_sources(sources, lengths)
    torch.testing.assert_close(new_lengths, lengths)
