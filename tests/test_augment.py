"""Training-time augmentation: every option reachable, and the mixture always rebuilt from the sources."""

import torch
from speechbrain.augment.time_domain import SpeedPerturb

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


class EachSourceAtItsSpeed(torch.nn.Module):
    """SpeechBrain's speed perturbation at 90 % for the first source it is called on, 110 % for the second."""

    def __init__(self, sample_rate: int = 8000):
        super().__init__()
        self.perturbations = [SpeedPerturb(sample_rate, speeds=[90]), SpeedPerturb(sample_rate, speeds=[110])]
        self.calls = 0

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.perturbations[self.calls - 1](waveform)


def test_perturbed_lengths_follow_the_longest_source_content():
    # Example 0 fills its 1000 samples; example 1 has content in its first 500 only (then padding).
    sources = torch.zeros(2, 1000, 2)
    sources[0] = 1.0
    sources[1, :500] = 1.0
    lengths = torch.tensor([1.0, 0.5])
    slow_time = SpeedPerturb(8000, speeds=[90])(sources[..., 0]).shape[1]  # the 90 % source gets longer
    fast_time = SpeedPerturb(8000, speeds=[110])(sources[..., 1]).shape[1]
    assert fast_time < 1000 < slow_time

    new_sources, new_lengths = perturb_sources(sources, lengths, EachSourceAtItsSpeed())
    # Both sources are cropped to the shorter one; example 1's content now ends where its slowed source's does.
    assert new_sources.shape == (2, fast_time, 2)
    torch.testing.assert_close(new_lengths, torch.tensor([1.0, 0.5 * slow_time / fast_time]))
    content_end = int(new_lengths[1] * fast_time)
    assert new_sources[1, content_end - 20, 0].abs() > 0.5  # the slowed source still speaks there...
    assert new_sources[1, content_end + 20 :].abs().max() < 0.05  # ...and nothing is left after it
