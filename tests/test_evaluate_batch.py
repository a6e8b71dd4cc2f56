"""Separation.evaluate_batch: audio examples written at TEST only, at most n_audio_to_save of them."""

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from tests.helpers import make_batch, make_brain


def start(brain, stage):
    brain.on_stage_start(stage, None)
    brain.modules.eval()


def test_test_stage_saves_exactly_n_audio_to_save_examples_across_batches(tmp_path):
    brain = make_brain(tmp_path, n_audio_to_save=3)
    start(brain, sb.Stage.TEST)
    brain.evaluate_batch(make_batch(batch_size=2, seed=0), sb.Stage.TEST)
    brain.evaluate_batch(make_batch(batch_size=2, seed=1), sb.Stage.TEST)
    files = sorted(p.name for p in (tmp_path / "out" / "audio").iterdir())
    # batch ids are utt0, utt1 in both batches: utt0 and utt1 of the first, utt0 of the second (overwritten)
    assert brain.audio_examples.saved == 3
    assert files == sorted(
        f"utt{b}_{name}.wav" for b in (0, 1) for name in ["mix", "source1", "source2", "source1hat", "source2hat"]
    )


def test_counter_is_reset_for_each_evaluation_run(tmp_path):
    brain = make_brain(tmp_path, n_audio_to_save=1)
    for _ in range(2):
        start(brain, sb.Stage.TEST)
        brain.evaluate_batch(make_batch(batch_size=2), sb.Stage.TEST)
        assert brain.audio_examples.saved == 1


def test_null_n_audio_to_save_saves_every_example(tmp_path):
    brain = make_brain(tmp_path, n_audio_to_save=None)
    start(brain, sb.Stage.TEST)
    brain.evaluate_batch(make_batch(batch_size=3), sb.Stage.TEST)
    assert brain.audio_examples.saved == 3


def test_no_audio_is_written_outside_test(tmp_path):
    brain = make_brain(tmp_path, n_audio_to_save=10)
    start(brain, sb.Stage.VALID)
    loss = brain.evaluate_batch(make_batch(batch_size=2), sb.Stage.VALID)
    assert torch.isfinite(loss)
    assert not (tmp_path / "out" / "audio").exists()


def test_saved_audio_is_cropped_to_the_true_length_and_silence_stays_finite(tmp_path):
    brain = make_brain(tmp_path, n_audio_to_save=None)
    batch = make_batch(batch_size=2, lengths=[4000, 3000])
    batch.s2_sig.data[1] = 0.0  # a silent reference
    batch.mix_sig.data[1] = batch.s1_sig.data[1]
    start(brain, sb.Stage.TEST)
    brain.evaluate_batch(batch, sb.Stage.TEST)
    silent, rate = sf.read(tmp_path / "out" / "audio" / "utt1_source2.wav")
    assert rate == 8000 and len(silent) == 3000 and not silent.any()
    for path in (tmp_path / "out" / "audio").iterdir():
        assert np.isfinite(sf.read(path)[0]).all()
    assert all(np.isfinite(v) for row in brain.test_rows for v in row.values() if isinstance(v, float))


def test_test_rows_hold_one_row_per_utterance_with_the_metric_columns(tmp_path):
    brain = make_brain(tmp_path, save_audio=False)
    start(brain, sb.Stage.TEST)
    brain.evaluate_batch(make_batch(batch_size=3), sb.Stage.TEST)
    assert [row["snt_id"] for row in brain.test_rows] == ["utt0", "utt1", "utt2"]
    assert {"sdr", "sdr_i", "si-snr", "si-snr_i"} <= set(brain.test_rows[0])


@pytest.mark.parametrize("config", ["convtasnet.yaml", "sepformer.yaml"])
def test_test_scores_do_not_depend_on_the_batch_size(tmp_path, config):
    """Global layer norms see the padding of a batched forward; evaluation must not let them."""
    brain = make_brain(tmp_path, config=config, save_audio=False)
    lengths = [4000, 2500, 3300, 1200]
    start(brain, sb.Stage.TEST)
    brain.evaluate_batch(make_batch(batch_size=4, lengths=lengths), sb.Stage.TEST)
    batched = {row["snt_id"]: row for row in brain.test_rows}
    full = make_batch(batch_size=4, lengths=lengths)
    for b, length in enumerate(lengths):
        start(brain, sb.Stage.TEST)
        # The same utterance alone, as a batch of one with no padding.
        example = {key: getattr(full, key).data[b, :length] for key in ("mix_sig", "s1_sig", "s2_sig")}
        single = PaddedBatch([{"id": full.id[b], **example}])
        brain.evaluate_batch(single, sb.Stage.TEST)
        (row,) = brain.test_rows
        for key in ("sdr", "sdr_i", "si-snr", "si-snr_i"):
            assert batched[row["snt_id"]][key] == pytest.approx(row[key], abs=0.01), key


def test_test_shifts_are_scored_beside_the_plain_pass_never_instead(tmp_path):
    """test_shifts=2: each utterance is separated as it is (the headline scores) and delayed by half an encoder
    hop, on its own length; the average of both views fills the `with_test_options_` columns."""
    brain = make_brain(tmp_path, save_audio=False, test_shifts=2)
    separated_lengths = []
    separate = brain.separate
    brain.separate = lambda mixture: separated_lengths.append(mixture.shape[1]) or separate(mixture)
    hop = brain.hparams.kernel_size // 2
    start(brain, sb.Stage.TEST)
    brain.evaluate_batch(make_batch(batch_size=2, lengths=[4000, 3000]), sb.Stage.TEST)
    assert separated_lengths == [4000, 4000 + hop // 2, 3000, 3000 + hop // 2]  # the plain pass is view 0
    plain = [row["si-snr"] for row in brain.test_rows]
    shifted = [row["with_test_options_si-snr"] for row in brain.test_rows]

    brain.hparams.test_shifts = 1
    start(brain, sb.Stage.TEST)
    brain.evaluate_batch(make_batch(batch_size=2, lengths=[4000, 3000]), sb.Stage.TEST)
    assert [row["si-snr"] for row in brain.test_rows] == plain
    assert "with_test_options_si-snr" not in brain.test_rows[0]
    assert all(np.isfinite(shifted)) and shifted != plain


def test_test_mixture_consistency_makes_each_utterances_estimates_sum_to_it(tmp_path):
    batch = make_batch(batch_size=2, lengths=[4000, 3000])
    brain = make_brain(tmp_path, save_audio=False)
    start(brain, sb.Stage.TEST)
    for consistent in (False, True):
        brain.hparams.test_mixture_consistency = consistent
        predictions = brain.compute_forward(batch, sb.Stage.TEST)
        mixture = predictions.mixture
        est_sources = predictions.est_sources_with_options if consistent else predictions.est_sources
        for b, length in enumerate([4000, 3000]):
            residual = (mixture[b, :length] - est_sources[b, :length].sum(-1)).norm() / mixture[b, :length].norm()
            assert (residual < 1e-5) if consistent else (residual > 0.01), (consistent, b, float(residual))
            assert not est_sources[b, length:].any()  # padding stays silent


def test_the_test_stage_in_bf16_scores_as_in_fp32(tmp_path):
    """--eval_precision=bf16 (SpeechBrain's run option): the test stage computes under autocast and scores in
    full precision, close to the fp32 scores of the same weights."""
    scores = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        brain = make_brain(tmp_path / precision, precision=precision, save_audio=False)
        start(brain, sb.Stage.TEST)
        brain.evaluate_batch(make_batch(batch_size=2, seconds=1.0), sb.Stage.TEST)
        scores[precision] = np.array([[row[key] for key in ("sdr", "si-snr")] for row in brain.test_rows])
    assert np.isfinite(scores["bf16"]).all()
    assert np.abs(scores["bf16"] - scores["fp32"]).max() < 0.5
    assert not np.array_equal(scores["bf16"], scores["fp32"])  # autocast did run
