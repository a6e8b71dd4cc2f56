"""The training-step rules of Separation.fit_batch, each checked on a tiny ConvTasNet."""

import math

import pytest
import speechbrain as sb
import torch

from speechsep.training.losses import pit_si_snr_loss
from tests.helpers import make_batch, make_brain, parameters_of

SGD = "!name:torch.optim.SGD {lr: 0.1}"


def with_loss_offsets(brain, offsets):
    """Make compute_objectives add fixed offsets (dB) to the real per-example losses."""
    real = brain.compute_objectives

    def shifted(predictions, batch, stage):
        return real(predictions, batch, stage) + torch.tensor(offsets)

    brain.compute_objectives = shifted


def assert_unchanged(before, brain):
    for old, new in zip(before, brain.modules.parameters()):
        assert torch.equal(old, new)
        assert new.grad is None or not new.grad.any()


def test_threshold_keeps_exactly_the_examples_above_it(tmp_path):
    batch = make_batch(batch_size=4)
    brain = make_brain(tmp_path / "a", optimizer=SGD, clip_grad_norm=0)
    reference = make_brain(tmp_path / "b", optimizer=SGD, clip_grad_norm=0)
    reference.modules.load_state_dict(brain.modules.state_dict())

    # examples 0 and 2 pushed below -30 dB: only 1 and 3 may contribute to the gradient
    with_loss_offsets(brain, [-100.0, 0.0, -100.0, 0.0])
    loss = brain.fit_batch(batch)

    sub_batch = make_batch(batch_size=4)
    predictions = reference.compute_forward(sub_batch, sb.Stage.TRAIN)
    est_sources, sources, lengths = predictions.est_sources, predictions.sources, predictions.lengths
    expected = pit_si_snr_loss(est_sources, sources, lengths)[[1, 3]].mean()
    expected.backward()
    reference.optimizer.step()

    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-5)
    for ours, theirs in zip(brain.modules.parameters(), reference.modules.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    assert brain.epoch_stats.examples_filtered == 2 and brain.epoch_stats.examples_seen == 4


def test_threshold_off_averages_every_example(tmp_path):
    brain = make_brain(tmp_path, threshold_byloss=False)
    loss, reason = brain.filter_loss(torch.tensor([-40.0, -10.0, 5.0]))
    assert reason is None and float(loss) == pytest.approx(-15.0)


def test_all_easy_batch_is_skipped_and_counted(tmp_path):
    brain = make_brain(tmp_path)
    with_loss_offsets(brain, [-100.0] * 4)
    before = parameters_of(brain)
    assert float(brain.fit_batch(make_batch())) == 0.0
    assert brain.nonfinite_count == 1
    assert_unchanged(before, brain)


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf, 8e6])
def test_nonfinite_or_above_limit_batch_is_skipped_counted_and_leaves_parameters_identical(tmp_path, bad_value):
    brain = make_brain(tmp_path)
    with_loss_offsets(brain, [0.0, bad_value, 0.0, 0.0])
    before = parameters_of(brain)
    assert float(brain.fit_batch(make_batch())) == 0.0
    assert brain.nonfinite_count == 1
    assert_unchanged(before, brain)
    # the next, healthy batch trains normally
    brain.compute_objectives = type(brain).compute_objectives.__get__(brain)
    brain.step += 1
    assert float(brain.fit_batch(make_batch(seed=1))) != 0.0
    assert any(not torch.equal(old, new) for old, new in zip(before, brain.modules.parameters()))


def test_nan_in_the_audio_skips_the_batch(tmp_path):
    brain = make_brain(tmp_path)
    batch = make_batch()
    batch.mix_sig.data[1, 100] = math.nan
    before = parameters_of(brain)
    assert float(brain.fit_batch(batch)) == 0.0
    assert brain.nonfinite_count == 1
    assert_unchanged(before, brain)


@pytest.mark.parametrize("clip", [1e-3, 0])
def test_clipping_bounds_the_applied_gradient_norm(tmp_path, clip):
    lr = 0.1
    brain = make_brain(tmp_path, optimizer=f"!name:torch.optim.SGD {{lr: {lr}}}", clip_grad_norm=clip)
    before = parameters_of(brain)
    brain.fit_batch(make_batch())
    step_norm = torch.sqrt(sum(((old - new) ** 2).sum() for old, new in zip(before, parameters_of(brain))))
    if clip > 0:
        assert float(step_norm) == pytest.approx(lr * clip, rel=1e-3)
    else:  # 0 disables clipping (upstream's `>= 0` would clip every gradient to zero)
        assert float(step_norm) > 10 * lr * 1e-3


def test_gradients_are_zeroed_after_each_step(tmp_path):
    brain = make_brain(tmp_path)
    brain.fit_batch(make_batch())
    assert all(p.grad is None for p in brain.modules.parameters())


def test_grad_accumulation_steps_every_n_batches(tmp_path):
    brain = make_brain(tmp_path)
    brain.grad_accumulation_factor = 2
    before = parameters_of(brain)
    brain.step = 1
    brain.fit_batch(make_batch())
    assert_unchanged_params = all(torch.equal(o, n) for o, n in zip(before, brain.modules.parameters()))
    assert assert_unchanged_params and brain.optimizer_step == 0
    brain.step = 2
    brain.fit_batch(make_batch(seed=1))
    assert brain.optimizer_step == 1
    assert any(not torch.equal(o, n) for o, n in zip(before, brain.modules.parameters()))


def test_bf16_training_step_runs_on_cpu(tmp_path):
    brain = make_brain(tmp_path, precision="bf16")
    before = parameters_of(brain)
    loss = brain.fit_batch(make_batch())
    assert torch.isfinite(loss) and float(loss) != 0.0
    assert loss.dtype == torch.float32  # the loss is computed in fp32 even under autocast
    assert any(not torch.equal(o, n) for o, n in zip(before, brain.modules.parameters()))


def test_loss_ignores_zero_padding():
    batch = make_batch(batch_size=2, lengths=[4000, 2500])
    sources = torch.stack([batch.s1_sig.data, batch.s2_sig.data], dim=-1)
    est_sources = sources.flip(-1) + 0.05 * torch.randn_like(sources)
    padded = pit_si_snr_loss(est_sources, sources, batch.mix_sig.lengths)
    alone = pit_si_snr_loss(est_sources[1:, :2500], sources[1:, :2500])
    assert float(padded[1]) == pytest.approx(float(alone[0]), abs=1e-4)
