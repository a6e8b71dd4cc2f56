"""Tests of speechsep.evaluation.metrics against the references it replaces (mir_eval, SpeechBrain's PIT SI-SNR);
the pairwise BSS-eval solver itself is tested in test_bss_eval_fast.py."""

import csv
import errno
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from speechbrain.nnet.losses import PitWrapper, cal_si_snr, get_si_snr_with_pitwrapper

from speechsep.evaluation import metrics
from speechsep.evaluation.metrics import (
    pit_sdr,
    pit_si_snr,
    separation_metrics,
    summarize,
    write_test_results,
)
from speechsep.output_files import OutputError
from tests.speech import mask_separation_example

SAMPLE_RATE = 8000
NUM_SAMPLES = 8000  # 1 s: mir_eval's cost hardly depends on length, 3 speakers take ~1 s per call
# A typical (~10 dB) and a weak (~5 dB) separator.
MASK_ERRORS = (0.1, 0.3)


def mir_eval_sdr(
    sources: np.ndarray, est_sources: np.ndarray, compute_permutation: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """mir_eval's SDR [num_spks] and permutation, for [time, num_spks] arrays."""
    from mir_eval.separation import bss_eval_sources

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mir_eval.separation is deprecated
        sdr, _, _, perm = bss_eval_sources(sources.T, est_sources.T, compute_permutation)
    return sdr, perm


def as_batch(*arrays: np.ndarray) -> list[torch.Tensor]:
    """Float32 tensors with a batch axis of 1, as a dataloader would give them."""
    return [torch.tensor(array, dtype=torch.float32).unsqueeze(0) for array in arrays]


@pytest.fixture(scope="module", params=[2, 3], ids=["2spk", "3spk"])
def scored_examples(request):
    """Mask-separated examples with mir_eval's scores of the estimates and of the mixture."""
    num_spks = request.param
    examples = []
    for seed, mask_error in enumerate(MASK_ERRORS):
        example = mask_separation_example(num_spks, NUM_SAMPLES, SAMPLE_RATE, seed, mask_error)
        mixture, sources, est_sources = example
        sdr, perm = mir_eval_sdr(sources, est_sources)
        # Identical estimates: every permutation scores the same, no need to search.
        sdr_mixture, _ = mir_eval_sdr(sources, np.repeat(mixture[:, None], num_spks, axis=1), False)
        examples.append(
            dict(mixture=mixture, sources=sources, est_sources=est_sources, sdr=sdr, perm=perm, sdr_mixture=sdr_mixture)
        )
    return examples


@pytest.mark.parametrize("permutation", ["sdr", "sir"])
def test_sdr_matches_mir_eval_per_source_on_mask_estimates(scored_examples, permutation):
    for example in scored_examples:
        sources, est_sources = as_batch(example["sources"], example["est_sources"])
        sdr, perm = pit_sdr(est_sources, sources, permutation=permutation)
        np.testing.assert_allclose(sdr[0].numpy(), example["sdr"], atol=0.05)
        np.testing.assert_array_equal(perm[0].numpy(), example["perm"])


@pytest.mark.parametrize("permutation", ["sdr", "sir"])
def test_sdr_improvement_matches_mir_eval_of_the_mixture(scored_examples, permutation):
    for example in scored_examples:
        batch = as_batch(example["mixture"], example["sources"], example["est_sources"])
        row = separation_metrics(*batch, sdr_permutation=permutation)[0]
        assert row["sdr"] == pytest.approx(example["sdr"].mean(), abs=0.05)
        assert row["sdr_i"] == pytest.approx(example["sdr"].mean() - example["sdr_mixture"].mean(), abs=0.05)


def sir_and_sdr_disagree() -> tuple[np.ndarray, np.ndarray]:
    """Estimate 0 has s1 without much s2 but is very noisy; estimate 1 is mostly s1 with all of s2.
    Mean SIR pairs estimate 0 with s1 (+1 dB vs -1 dB); mean SDR pairs it with s2."""
    _, sources, _ = mask_separation_example(2, NUM_SAMPLES, SAMPLE_RATE)
    s1, s2 = sources.T / np.linalg.norm(sources, axis=0)[:, None]
    noise = np.random.default_rng(0).standard_normal(NUM_SAMPLES) / np.sqrt(NUM_SAMPLES)
    return sources, np.stack([s1 + 0.4 * s2 + noise, 2.0 * s1 + s2], axis=1)


def test_sir_permutation_is_mir_evals_best_mean_sir():
    sources, est_sources = sir_and_sdr_disagree()
    sdr, perm = pit_sdr(*as_batch(est_sources, sources), permutation="sir")
    expected_sdr, expected_perm = mir_eval_sdr(sources, est_sources)
    assert perm[0].tolist() == expected_perm.tolist() == [0, 1]
    np.testing.assert_allclose(sdr[0].numpy(), expected_sdr, atol=0.05)


def test_sdr_permutation_is_the_best_mean_sdr():
    sources, est_sources = sir_and_sdr_disagree()
    sdr, perm = pit_sdr(*as_batch(est_sources, sources))
    assert perm[0].tolist() == [1, 0]
    # mir_eval's SDR of the same pairs, its permutation search turned off.
    expected_sdr, _ = mir_eval_sdr(sources, est_sources[:, [1, 0]], compute_permutation=False)
    np.testing.assert_allclose(sdr[0].numpy(), expected_sdr, atol=0.05)
    assert sdr[0].mean() > pit_sdr(*as_batch(est_sources, sources), permutation="sir")[0][0].mean()


def test_unknown_sdr_permutation_is_an_error():
    mixture, sources, est_sources = as_batch(*mask_separation_example(2, NUM_SAMPLES, SAMPLE_RATE))
    with pytest.raises(ValueError, match="unknown SDR permutation rule 'snr'"):
        separation_metrics(mixture, sources, est_sources, sdr_permutation="snr")


def test_mask_estimates_are_realistic(scored_examples):
    """Guards the premise of the comparisons: estimates are separations, neither perfect nor noise."""
    sdrs = np.concatenate([example["sdr"] for example in scored_examples])
    assert sdrs.min() > 0.0 and sdrs.max() < 25.0


@pytest.mark.parametrize("num_spks", [2, 3])
def test_si_snr_matches_speechbrain_pit_wrapper(num_spks):
    # Seed 7 puts 3 estimates in cyclic order, where a permutation and its inverse differ.
    _, sources, est_sources = mask_separation_example(num_spks, NUM_SAMPLES, SAMPLE_RATE, seed=7)
    sources, est_sources = torch.tensor(sources).unsqueeze(0), torch.tensor(est_sources).unsqueeze(0)
    si_snr, perm = pit_si_snr(est_sources, sources)
    expected = -get_si_snr_with_pitwrapper(sources, est_sources).item()
    assert si_snr.mean().item() == pytest.approx(expected, abs=1e-6)
    # PitWrapper gives, for each estimate, its reference; ours gives, for each reference, its estimate.
    _, (speechbrain_perm,) = PitWrapper(cal_si_snr)(sources, est_sources)
    assert [perm[0, ref].item() for ref in speechbrain_perm] == list(range(num_spks))


def test_padded_batch_matches_one_utterance_at_a_time():
    num_samples = [8000, 6000, 7001, 4000]
    examples = [mask_separation_example(2, n, SAMPLE_RATE, seed) for seed, n in enumerate(num_samples)]
    time = max(num_samples)
    mixture, sources, est_sources = torch.zeros(4, time), torch.zeros(4, time, 2), torch.randn(4, time, 2)
    for b, (mix, src, est) in enumerate(examples):
        n = len(mix)
        mixture[b, :n], sources[b, :n], est_sources[b, :n] = (torch.from_numpy(x) for x in (mix, src, est))
    lengths = torch.tensor(num_samples) / time

    batched_rows = separation_metrics(mixture, sources, est_sources, lengths, snt_ids=list("abcd"))
    for b, example in enumerate(examples):
        single_row = separation_metrics(*as_batch(*example), snt_ids=[batched_rows[b]["snt_id"]])[0]
        assert batched_rows[b].keys() == single_row.keys()
        for key, value in single_row.items():
            if isinstance(value, float):
                assert batched_rows[b][key] == pytest.approx(value, abs=0.01), key
            else:
                assert batched_rows[b][key] == value, key


def test_perfect_estimates_give_large_finite_scores():
    mixture, sources, _ = mask_separation_example(2, NUM_SAMPLES, SAMPLE_RATE)
    row = separation_metrics(*as_batch(mixture, sources, sources))[0]
    assert 60.0 < row["sdr"] < math.inf and 60.0 < row["si-snr"] < math.inf
    assert row["sdr_i"] > 50.0 and row["si-snr_i"] > 50.0


def test_mixture_as_estimate_gives_zero_improvement():
    mixture, sources, _ = mask_separation_example(3, NUM_SAMPLES, SAMPLE_RATE)
    row = separation_metrics(*as_batch(mixture, sources, np.repeat(mixture[:, None], 3, axis=1)))[0]
    for key in ("sdr_i", "si-snr_i", "sdr_i_s1", "si-snr_i_s3"):
        assert row[key] == pytest.approx(0.0, abs=1e-9), key


def test_permuted_estimates_give_the_same_scores():
    mixture, sources, est_sources = mask_separation_example(3, NUM_SAMPLES, SAMPLE_RATE)
    rows = {
        order: separation_metrics(*as_batch(mixture, sources, est_sources[:, list(order)]))[0]
        for order in [(0, 1, 2), (1, 2, 0), (0, 2, 1)]
    }
    reference = rows[(0, 1, 2)]
    for order, row in rows.items():
        for key, value in reference.items():
            if key != "perm":
                assert row[key] == pytest.approx(value, abs=1e-9), (order, key)
        # perm points at the same estimate wherever it was moved to.
        assert [order[index] for index in row["perm"]] == list(reference["perm"])


def test_perm_reorders_estimates_to_follow_references():
    mixture, sources, est_sources = mask_separation_example(3, NUM_SAMPLES, SAMPLE_RATE, seed=3)
    row = separation_metrics(*as_batch(mixture, sources, est_sources))[0]
    reordered = separation_metrics(*as_batch(mixture, sources, est_sources[:, list(row["perm"])]))[0]
    assert reordered["perm"] == (0, 1, 2)


def assert_all_finite(row: dict) -> None:
    values = [value for value in row.values() if isinstance(value, float)]
    assert values and all(math.isfinite(value) for value in values), row


def test_silent_reference_gives_finite_scores():
    mixture, sources, est_sources = mask_separation_example(2, NUM_SAMPLES, SAMPLE_RATE)
    sources[:, 1] = 0.0
    row = separation_metrics(*as_batch(mixture, sources, est_sources))[0]
    assert_all_finite(row)
    assert row["sdr_s1"] > 0.0  # the other source is still scored normally


def test_silent_estimate_gives_finite_scores():
    mixture, sources, est_sources = mask_separation_example(2, NUM_SAMPLES, SAMPLE_RATE)
    est_sources[:, 0] = 0.0
    row = separation_metrics(*as_batch(mixture, sources, est_sources))[0]
    assert_all_finite(row)
    assert min(row["sdr_s1"], row["sdr_s2"]) < -50.0


def test_very_short_utterance_gives_finite_scores():
    # 40 samples: far fewer than the 2 x 512 filter taps, the projection system is singular.
    mixture, sources, est_sources = as_batch(*mask_separation_example(2, NUM_SAMPLES, SAMPLE_RATE))
    row = separation_metrics(mixture, sources, est_sources, lengths=torch.tensor([40 / NUM_SAMPLES]))[0]
    assert_all_finite(row)


def test_stoi_is_added_on_request():
    mixture, sources, est_sources = as_batch(*mask_separation_example(2, NUM_SAMPLES, SAMPLE_RATE))
    row = separation_metrics(mixture, sources, est_sources, compute_stoi=True, sample_rate=SAMPLE_RATE)[0]
    assert 0.0 < row["stoi"] <= 1.0 and 0.0 < row["stoi_s2"] <= 1.0
    assert row["stoi_i"] > 0.0  # the estimates are more intelligible than the mixture
    assert "stoi" not in separation_metrics(mixture, sources, est_sources)[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lengths=torch.tensor([0.0])), "relative lengths"),
        (dict(lengths=torch.tensor([1.5])), "relative lengths"),
        (dict(compute_stoi=True), "sample_rate"),
        (dict(compute_pesq=True, sample_rate=44100), "PESQ scores audio at 8000 or 16000 Hz, not 44100 Hz"),
        (dict(snt_ids=["a", "b"]), "snt_ids"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    mixture, sources, est_sources = torch.zeros(1, 100), torch.zeros(1, 100, 2), torch.zeros(1, 100, 2)
    with pytest.raises(ValueError, match=message):
        separation_metrics(mixture, sources, est_sources, **kwargs)


def test_mismatched_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="est_sources"):
        pit_si_snr(torch.zeros(1, 90, 2), torch.zeros(1, 100, 2))
    with pytest.raises(ValueError, match="est_sources"):
        separation_metrics(torch.zeros(1, 100), torch.zeros(1, 100, 2), torch.zeros(1, 100, 3))
    with pytest.raises(ValueError, match="mixture"):
        separation_metrics(torch.zeros(1, 90), torch.zeros(1, 100, 2), torch.zeros(1, 100, 2))


def test_summarize_known_numbers():
    rows = [{"snt_id": str(value), "sdr": value} for value in (1.0, 2.0, 3.0, 10.0)]
    summary = summarize(rows)["sdr"]
    std = np.std([1.0, 2.0, 3.0, 10.0], ddof=1)
    half_width = 3.182446305284263 * std / 2.0  # t(0.975, df=3) * std / sqrt(4)
    assert summary["mean"] == pytest.approx(4.0)
    assert summary["median"] == pytest.approx(2.5)
    assert summary["std"] == pytest.approx(std)
    assert summary["ci95_low"] == pytest.approx(4.0 - half_width)
    assert summary["ci95_high"] == pytest.approx(4.0 + half_width)
    assert summary["count"] == 4


def test_summarize_single_row_has_no_interval():
    summary = summarize([{"sdr": 5.0}])["sdr"]
    assert summary["std"] == 0.0 and summary["ci95_low"] is None and summary["count"] == 1


def test_write_test_results_csv_and_summary_json(tmp_path):
    mixture, sources, est_sources = as_batch(*mask_separation_example(2, NUM_SAMPLES, SAMPLE_RATE))
    rows = separation_metrics(mixture, sources, est_sources, snt_ids=["mix_001"])
    json_path = write_test_results(rows, tmp_path / "test_results.csv")

    with open(tmp_path / "test_results.csv", newline="") as csv_file:
        header, *lines = list(csv.reader(csv_file))
    metric_columns = [
        "sdr",
        "sdr_i",
        "si-snr",
        "si-snr_i",
        "sdr_s1",
        "sdr_s2",
        "sdr_i_s1",
        "sdr_i_s2",
        "si-snr_s1",
        "si-snr_s2",
        "si-snr_i_s1",
        "si-snr_i_s2",
    ]
    assert header == ["snt_id"] + metric_columns
    assert lines[0][0] == "mix_001" and float(lines[0][1]) == pytest.approx(rows[0]["sdr"])
    assert json_path == tmp_path / "test_results_summary.json"
    summary = json.loads(json_path.read_text())
    assert list(summary) == metric_columns and summary["sdr"]["count"] == 1


def test_test_results_whose_summary_cannot_be_written_leave_neither_file(tmp_path, monkeypatch):
    """A full disk while the summary is written: no results table without its summary (and no earlier
    results replaced by half of new ones)."""
    (tmp_path / "test_results.csv").write_text("earlier results")

    def summary_on_a_full_disk(text):
        def write(path):
            path.write_text(text[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return write

    monkeypatch.setattr(metrics, "text_content", summary_on_a_full_disk)
    with pytest.raises(OutputError, match="cannot write .*test_results_summary.json: No space left on device"):
        write_test_results([{"snt_id": "mix_001", "sdr": 1.0}], tmp_path / "test_results.csv")
    assert [path.name for path in tmp_path.iterdir()] == ["test_results.csv"]
    assert (tmp_path / "test_results.csv").read_text() == "earlier results"
