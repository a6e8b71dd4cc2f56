"""Tests of speechsep.evaluation.bss_eval_fast, the one module on fast_bss_eval's internals: every pair's SDR and SIR
against mir_eval and against fast_bss_eval's public functions, so that an upgrade of either is checked here."""

import itertools
import warnings

import fast_bss_eval
import numpy as np
import pytest
import torch

from speechsep.evaluation import bss_eval_fast
from speechsep.evaluation.bss_eval_fast import (
    SDR_CLAMP_DB,
    SDR_FILTER_LENGTH,
    SDR_LOAD_DIAG,
    pairwise_bss_eval,
    pairwise_sdr,
    unit_norm_signals,
)
from tests.speech import mask_separation_example

SAMPLE_RATE = 8000
NUM_SAMPLES = 8000


def as_batch(*arrays: np.ndarray) -> list[torch.Tensor]:
    """Float32 tensors with a batch axis of 1, as a dataloader would give them."""
    return [torch.tensor(array, dtype=torch.float32).unsqueeze(0) for array in arrays]


def every_order(num_spks: int) -> list[tuple[int, ...]]:
    """Estimate orders that, taken together, pair every estimate with every reference."""
    return list(itertools.permutations(range(num_spks)))


def test_every_pair_matches_mir_eval():
    _, sources, est_sources = mask_separation_example(2, NUM_SAMPLES, SAMPLE_RATE, seed=1)
    from mir_eval.separation import bss_eval_sources

    sdr_pairs, sir_pairs = pairwise_bss_eval(*as_batch(est_sources, sources))
    for order in every_order(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # mir_eval.separation is deprecated
            sdr, sir, _, _ = bss_eval_sources(sources.T, est_sources[:, list(order)].T, False)
        for ref, est in enumerate(order):
            assert sdr_pairs[0, est, ref].item() == pytest.approx(sdr[ref], abs=0.05)
            assert sir_pairs[0, est, ref].item() == pytest.approx(sir[ref], abs=0.05)


@pytest.mark.parametrize("num_spks", [2, 3])
def test_every_pair_equals_fast_bss_evals_public_functions_on_padded_batches(num_spks):
    """`fast_bss_eval.sdr_loss` (pairwise) and `fast_bss_eval.bss_eval_sources` (one call per estimate order),
    given the same padding-free unit-norm signals, filter length, clamp and diagonal loading."""
    examples = [mask_separation_example(num_spks, n, SAMPLE_RATE, seed) for seed, n in enumerate([8000, 5000])]
    sources, est_sources = torch.zeros(2, 8000, num_spks), torch.zeros(2, 8000, num_spks)
    for b, (_, src, est) in enumerate(examples):
        sources[b, : len(src)], est_sources[b, : len(est)] = torch.from_numpy(src), torch.from_numpy(est)
    lengths = torch.tensor([1.0, 5000 / 8000])
    options = dict(filter_length=SDR_FILTER_LENGTH, clamp_db=SDR_CLAMP_DB, load_diag=SDR_LOAD_DIAG)

    sdr_pairs, sir_pairs = pairwise_bss_eval(est_sources, sources, lengths)
    refs, ests = unit_norm_signals(est_sources, sources, lengths)
    public_sdr = -fast_bss_eval.sdr_loss(ests, refs, pairwise=True, **options)  # [batch, ref, est]
    torch.testing.assert_close(
        pairwise_sdr(est_sources, sources, lengths), public_sdr.transpose(1, 2), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(sdr_pairs, public_sdr.transpose(1, 2), rtol=0, atol=1e-6)
    for order in every_order(num_spks):
        sdr, sir, _ = fast_bss_eval.bss_eval_sources(refs, ests[:, list(order)], compute_permutation=False, **options)
        for ref, est in enumerate(order):
            torch.testing.assert_close(sdr_pairs[:, est, ref], sdr[:, ref], rtol=0, atol=1e-6)
            torch.testing.assert_close(sir_pairs[:, est, ref], sir[:, ref], rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_spks", [2, 3])
def test_sdr_alone_equals_the_sdr_of_the_full_decomposition(num_spks):
    for seed, mask_error in enumerate((0.1, 0.3)):
        _, sources, est_sources = mask_separation_example(num_spks, NUM_SAMPLES, SAMPLE_RATE, seed, mask_error)
        batch = as_batch(est_sources, sources)
        sdr_pairs, _ = pairwise_bss_eval(*batch)
        torch.testing.assert_close(pairwise_sdr(*batch), sdr_pairs, rtol=0, atol=1e-9)


def test_levinson_and_cholesky_solvers_agree_even_on_pure_tones():
    """The CPU path (Levinson recursion) and the accelerator path (Cholesky) of the SDR solve."""
    time = np.arange(NUM_SAMPLES) / SAMPLE_RATE
    tones = np.stack([np.sin(2 * np.pi * 440 * time), np.sin(2 * np.pi * 300 * time)], axis=1)
    noisy_tones = tones + 0.1 * np.random.default_rng(0).standard_normal(tones.shape)
    _, speech, speech_estimates = mask_separation_example(2, NUM_SAMPLES, SAMPLE_RATE)
    for sources, est_sources in [(speech, speech_estimates), (tones, noisy_tones)]:
        refs, ests = unit_norm_signals(*as_batch(est_sources, sources), None)
        acf, xcorr = bss_eval_fast._own_reference_stats(refs, ests)
        levinson = bss_eval_fast._explained_by_each_levinson(acf, xcorr)
        cholesky = bss_eval_fast._explained_by_each_cholesky(acf, xcorr)
        torch.testing.assert_close(levinson, cholesky, rtol=1e-9, atol=1e-12)
