"""BSS-eval v3 SDR and SIR of every estimate/reference pair, on padded batches.

The one module that uses fast_bss_eval's undocumented helpers (`torch.linalg.toeplitz`, `block_toeplitz`,
`torch.metrics.compute_stats_2`): its public functions (`fast_bss_eval.sdr_loss`, `bss_eval_sources`) solve
each reference's 512-tap system by a general LU solve and give SIR only at the permutation they pick, while
the test stage needs every pair, including the mixture as an extra estimate. Here each system is solved by
Levinson recursion on the CPU (Cholesky elsewhere); docs/experiments.md (2026-12-07) has the measurement behind
keeping it. tests/test_bss_eval_fast.py checks the results against mir_eval and against fast_bss_eval's public
functions, so a fast_bss_eval upgrade is checked in one place.

Each utterance is scored on its true length only (padding is zeroed, and zeros do not change correlations),
so results do not depend on the batch size. Shapes follow SpeechBrain: `sources` and `est_sources`
[batch, time, num_spks], `lengths` relative in (0, 1]. Results are [batch, num_est, num_spks] in dB, float64.
"""

import itertools

import numpy as np
import torch
from fast_bss_eval.torch.linalg import block_toeplitz, toeplitz
from fast_bss_eval.torch.metrics import compute_stats_2
from scipy.fft import next_fast_len
from scipy.linalg import solve_toeplitz

from speechsep.training.losses import length_mask

# BSS-eval v3 distortion filter length (taps), as in mir_eval and the BSS Eval Matlab toolbox.
SDR_FILTER_LENGTH = 512
# SDR/SIR are clamped to [-SDR_CLAMP_DB, SDR_CLAMP_DB]; only perfect or silent signals reach it.
SDR_CLAMP_DB = 100.0
# Added to the diagonal of the (unit-norm) reference correlation matrices, so that silent or very
# short references give a solvable system; far below what changes realistic SDRs.
SDR_LOAD_DIAG = 1e-10


def check_signals(est_sources: torch.Tensor, sources: torch.Tensor) -> None:
    """Raise ValueError unless `sources` is [batch, time, num_spks] and `est_sources` [batch, time, *]."""
    if sources.dim() != 3:
        raise ValueError(f"sources has shape {tuple(sources.shape)}, expected [batch, time, num_spks]")
    if est_sources.shape[:2] != sources.shape[:2] or est_sources.dim() != 3:
        raise ValueError(
            f"est_sources has shape {tuple(est_sources.shape)}, expected [batch, time, *] "
            f"matching sources {tuple(sources.shape)}"
        )


def _unit_norm(signals: torch.Tensor) -> torch.Tensor:
    """Scale each row of [..., time] to unit energy; silent rows stay zero.

    BSS-eval is scale invariant; doing this ourselves keeps it so for very quiet signals too
    (fast_bss_eval clamps norms at 1e-6).
    """
    norm = signals.norm(dim=-1, keepdim=True)
    return signals / torch.where(norm > 0, norm, torch.ones_like(norm))


def _coherence_to_db(coherence: torch.Tensor, clamp_db: float) -> torch.Tensor:
    """Map an explained-energy share c in [0, 1] to 10 log10(c / (1 - c)), clamped to +-clamp_db."""
    eps = 1.0 / (1.0 + 10 ** (clamp_db / 10))
    coherence = coherence.clamp(min=eps, max=1 - eps)
    return 10 * torch.log10(coherence / (1 - coherence))


def unit_norm_signals(
    est_sources: torch.Tensor, sources: torch.Tensor, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """References [batch, num_spks, time] and estimates [batch, num_est, time], float64, unit norm
    on each utterance's true length, zero beyond: the inputs BSS-eval expects, padding removed."""
    check_signals(est_sources, sources)
    batch, time, _ = sources.shape
    mask = length_mask(lengths, batch, time, sources.device, torch.float64).unsqueeze(1)  # [batch, 1, time]
    refs = _unit_norm(sources.double().transpose(1, 2) * mask)
    ests = _unit_norm(est_sources.double().transpose(1, 2) * mask)
    return refs, ests


def _own_reference_stats(refs: torch.Tensor, ests: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lags 0 ... taps-1 of each reference's autocorrelation, acf [batch, num_spks, taps], and of its
    cross-correlation with each estimate, xcorr [batch, num_spks, num_est, taps]
    (xcorr[..., lag] = sum_t ref[t] est[t + lag], as `compute_stats_2`).

    The FFT only needs to be long enough for `taps` lags without wrap-around (half of what a full
    linear correlation takes), and only the references' own autocorrelations are formed.
    """
    n_fft = next_fast_len(refs.shape[-1] + SDR_FILTER_LENGTH - 1, real=True)
    ref_spectra = torch.fft.rfft(refs, n=n_fft)  # [batch, num_spks, bins]
    est_spectra = torch.fft.rfft(ests, n=n_fft)  # [batch, num_est, bins]
    acf = torch.fft.irfft(ref_spectra.abs().pow(2), n=n_fft)[..., :SDR_FILTER_LENGTH]
    acf[..., 0] += SDR_LOAD_DIAG
    cross_spectra = ref_spectra.conj().unsqueeze(-2) * est_spectra.unsqueeze(-3)  # [batch, num_spks, num_est, bins]
    xcorr = torch.fft.irfft(cross_spectra, n=n_fft)[..., :SDR_FILTER_LENGTH]
    return acf, xcorr


def _explained_by_each(acf: torch.Tensor, xcorr: torch.Tensor) -> torch.Tensor:
    """Share of each estimate's energy that a 512-tap filter of one reference explains,
    [batch, num_spks, num_est]: the `s_target` of BSS-eval, all that SDR needs.

    These are the normal equations of fast_bss_eval's SDR, kept as the quadratic forms x^T R^-1 x,
    with R one reference's Toeplitz autocorrelation matrix. On the CPU they are solved by Levinson
    recursion (scipy, O(taps^2)); elsewhere by a batched Cholesky (O(taps^3) but on the accelerator).
    """
    if acf.device.type == "cpu":
        return _explained_by_each_levinson(acf, xcorr)
    return _explained_by_each_cholesky(acf, xcorr)


def _explained_by_each_levinson(acf: torch.Tensor, xcorr: torch.Tensor) -> torch.Tensor:
    acf, xcorr = acf.detach().numpy(), xcorr.detach().numpy()  # a metric: no gradient
    batch, num_spks, num_est, _ = xcorr.shape
    coherence = np.empty((batch, num_spks, num_est))
    for b, k in itertools.product(range(batch), range(num_spks)):
        filters = solve_toeplitz(acf[b, k], xcorr[b, k].T)  # [taps, num_est]
        coherence[b, k] = np.einsum("ne,en->e", filters, xcorr[b, k])
    return torch.from_numpy(coherence)


def _explained_by_each_cholesky(acf: torch.Tensor, xcorr: torch.Tensor) -> torch.Tensor:
    # Positive definite thanks to SDR_LOAD_DIAG; half the flops of an LU solve.
    chol = torch.linalg.cholesky(toeplitz(acf))  # [batch, num_spks, taps, taps]
    whitened = torch.linalg.solve_triangular(chol, xcorr.transpose(-1, -2), upper=False)
    return whitened.pow(2).sum(dim=-2)


def _explained_by_all(acf: torch.Tensor, xcorr: torch.Tensor) -> torch.Tensor:
    """Share of each estimate's energy that filters of all references together explain, [batch, num_est],
    from `compute_stats_2`'s acf [batch, 2 * taps, num_spks, num_spks] and xcorr [batch, taps, num_spks, num_est]:
    one block-Toeplitz system of size taps * num_spks, the costly part of SIR."""
    chol = torch.linalg.cholesky(block_toeplitz(acf))
    whitened = torch.linalg.solve_triangular(chol, xcorr.flatten(-3, -2), upper=False)
    return whitened.pow(2).sum(dim=-2)


def pairwise_sdr(
    est_sources: torch.Tensor,
    sources: torch.Tensor,
    lengths: torch.Tensor | None = None,
    clamp_db: float = SDR_CLAMP_DB,
) -> torch.Tensor:
    """BSS-eval v3 SDR in dB [batch, num_est, num_spks] of every estimate/reference pair.

    Same decomposition as `mir_eval.separation.bss_eval_sources` (512-tap filters, no mean
    removal), in float64 on the inputs' device. SDR = |s_target|^2 / |estimate - s_target|^2 only
    needs each reference's own filter: one taps x taps Toeplitz system per reference.
    """
    refs, ests = unit_norm_signals(est_sources, sources, lengths)
    return _coherence_to_db(_explained_by_each(*_own_reference_stats(refs, ests)), clamp_db).transpose(1, 2)


def pairwise_bss_eval(
    est_sources: torch.Tensor,
    sources: torch.Tensor,
    lengths: torch.Tensor | None = None,
    clamp_db: float = SDR_CLAMP_DB,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BSS-eval v3 SDR and SIR in dB, each [batch, num_est, num_spks], for every estimate/reference pair.

    As `pairwise_sdr`, plus SIR, which also needs the projection on all references together
    (a (taps * num_spks)-sized system: several times the cost of SDR alone).
    """
    refs, ests = unit_norm_signals(est_sources, sources, lengths)
    # All cross-correlations at once; each reference's own ones are a slice of them.
    acf, xcorr = compute_stats_2(refs, ests, length=SDR_FILTER_LENGTH)
    spks = list(range(refs.shape[-2]))
    acf[..., 0, spks, spks] += SDR_LOAD_DIAG
    own_acf = acf[..., :SDR_FILTER_LENGTH, spks, spks].transpose(-1, -2).contiguous()  # [batch, num_spks, taps]
    coh_sdr = _explained_by_each(own_acf, xcorr.permute(0, 2, 3, 1).contiguous())
    coh_sar = _explained_by_all(acf, xcorr).unsqueeze(-2)  # [batch, 1, num_est]
    coh_sir = torch.where(coh_sar > 0, coh_sdr / coh_sar, torch.zeros_like(coh_sdr))
    return _coherence_to_db(coh_sdr, clamp_db).transpose(1, 2), _coherence_to_db(coh_sir, clamp_db).transpose(1, 2)
