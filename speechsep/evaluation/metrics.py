"""Separation metrics for the TEST stage: SDR, SI-SNR, their improvements, optional STOI and PESQ.

Everything is computed in one pass over a padded batch. Each utterance is scored on its true
length only (padding is zeroed, and zeros do not change correlations), so results do not depend
on the batch size. Shapes follow SpeechBrain: `mixture` [batch, time], `sources` and `est_sources`
[batch, time, num_spks], `lengths` relative in (0, 1].

- SI-SNR follows `speechbrain.nnet.losses.cal_si_snr` (zero-mean, EPS=1e-8 conventions), and the
  permutation is the best mean SI-SNR, as with `get_si_snr_with_pitwrapper` (which returns its
  negative).
- SDR is BSS-eval v3 `bss_eval_sources` (512-tap distortion filter), as
  `mir_eval.separation.bss_eval_sources` (deprecated, gone in mir_eval 0.9), computed with
  `fast_bss_eval`'s correlation helpers in float64, where it matches mir_eval to ~1e-4 dB. The
  permutation is the best mean SDR by default (one 512 x 512 system per reference); mir_eval's
  rule, best mean SIR, is available (`sdr_permutation="sir"`) at a few times the cost.
- Improvements (`*_i`) are over the mixture used as the estimate of every source.
- STOI (`pystoi`) and PESQ (`pesq`, ITU-T P.862: narrowband at 8 kHz, wideband at 16 kHz), as the enhancement
  literature reports them, are optional: they run on the CPU, one utterance at a time.

All dB metrics are positive-is-better and finite: silent or degenerate signals give the clamp
values (-80 dB SI-SNR from SpeechBrain's EPS, -/+ `SDR_CLAMP_DB` SDR) instead of NaN.
"""

import functools
import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from fast_bss_eval.torch.linalg import block_toeplitz, toeplitz
from fast_bss_eval.torch.metrics import compute_stats_2
from scipy import stats
from scipy.fft import next_fast_len
from scipy.linalg import solve_toeplitz

from speechsep.output_files import csv_content, text_content, write_files
from speechsep.training.losses import best_permutation, length_mask, pairwise_si_snr

# BSS-eval v3 distortion filter length (taps), as in mir_eval and the BSS Eval Matlab toolbox.
SDR_FILTER_LENGTH = 512
# SDR/SIR are clamped to [-SDR_CLAMP_DB, SDR_CLAMP_DB]; only perfect or silent signals reach it.
SDR_CLAMP_DB = 100.0
# Added to the diagonal of the (unit-norm) reference correlation matrices, so that silent or very
# short references give a solvable system; far below what changes realistic SDRs.
SDR_LOAD_DIAG = 1e-10


def _check_signals(est_sources: torch.Tensor, sources: torch.Tensor) -> None:
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


def _unit_norm_signals(
    est_sources: torch.Tensor, sources: torch.Tensor, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """References [batch, num_spks, time] and estimates [batch, num_est, time], float64, unit norm
    on each utterance's true length, zero beyond."""
    _check_signals(est_sources, sources)
    batch, time, _ = sources.shape
    mask = length_mask(lengths, batch, time, sources.device, torch.float64).unsqueeze(1)  # [batch, 1, time]
    refs = _unit_norm(sources.double().transpose(1, 2) * mask)
    ests = _unit_norm(est_sources.double().transpose(1, 2) * mask)
    return refs, ests


def _own_reference_stats(refs: torch.Tensor, ests: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lags 0 ... taps-1 of each reference's autocorrelation, acf [batch, num_spks, taps], and of its
    cross-correlation with each estimate, xcorr [batch, num_spks, num_est, taps]
    (xcorr[..., lag] = sum_t ref[t] est[t + lag], as `fast_bss_eval.torch.metrics.compute_stats_2`).

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

    These are the normal equations of `fast_bss_eval.torch.square_cosine_metrics`, kept as the
    quadratic forms x^T R^-1 x, with R one reference's Toeplitz autocorrelation matrix. On the CPU
    they are solved by Levinson recursion (scipy, O(taps^2)); elsewhere by a batched Cholesky
    (O(taps^3) but on the accelerator). Both agree to ~1e-10 dB, even for pure tones.
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
    # Positive definite thanks to SDR_LOAD_DIAG; half the flops of fast_bss_eval's LU solve.
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
    refs, ests = _unit_norm_signals(est_sources, sources, lengths)
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
    refs, ests = _unit_norm_signals(est_sources, sources, lengths)
    # All cross-correlations at once; each reference's own ones are a slice of them.
    acf, xcorr = compute_stats_2(refs, ests, length=SDR_FILTER_LENGTH)
    spks = list(range(refs.shape[-2]))
    acf[..., 0, spks, spks] += SDR_LOAD_DIAG
    own_acf = acf[..., :SDR_FILTER_LENGTH, spks, spks].transpose(-1, -2).contiguous()  # [batch, num_spks, taps]
    coh_sdr = _explained_by_each(own_acf, xcorr.permute(0, 2, 3, 1).contiguous())
    coh_sar = _explained_by_all(acf, xcorr).unsqueeze(-2)  # [batch, 1, num_est]
    coh_sir = torch.where(coh_sar > 0, coh_sdr / coh_sar, torch.zeros_like(coh_sdr))
    return _coherence_to_db(coh_sdr, clamp_db).transpose(1, 2), _coherence_to_db(coh_sir, clamp_db).transpose(1, 2)


def _take(scores: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Scores [batch, num_spks] of the pairs chosen by `perm` (estimate per reference) from [batch, est, ref]."""
    return scores.gather(1, perm.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def pit_si_snr(
    est_sources: torch.Tensor, sources: torch.Tensor, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation-invariant SI-SNR in dB.

    Returns (si_snr [batch, num_spks] per reference, perm [batch, num_spks]) where reference k
    is matched with estimate perm[:, k], so `est_sources[b, :, perm[b]]` follows the references.
    The mean over speakers equals `-get_si_snr_with_pitwrapper(sources, est_sources)`.
    """
    _check_signals(est_sources, sources)
    scores = pairwise_si_snr(est_sources, sources, lengths, torch.float64)
    _, perm = best_permutation(scores)
    return _take(scores, perm), perm


SDR_PERMUTATIONS = ("sdr", "sir")


def _sdr_and_selection_scores(
    est_sources: torch.Tensor, sources: torch.Tensor, lengths: torch.Tensor | None, permutation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise SDR and the pairwise scores whose best mean picks the permutation."""
    if permutation == "sdr":
        sdr = pairwise_sdr(est_sources, sources, lengths)
        return sdr, sdr
    if permutation == "sir":
        return pairwise_bss_eval(est_sources, sources, lengths)
    raise ValueError(f"unknown SDR permutation rule {permutation!r}, expected one of {SDR_PERMUTATIONS}")


@torch.no_grad()
def pit_sdr(
    est_sources: torch.Tensor,
    sources: torch.Tensor,
    lengths: torch.Tensor | None = None,
    permutation: str = "sdr",
) -> tuple[torch.Tensor, torch.Tensor]:
    """BSS-eval v3 SDR in dB, as `mir_eval.separation.bss_eval_sources`.

    Returns (sdr [batch, num_spks] per reference, perm [batch, num_spks]), same convention as
    `pit_si_snr`. `permutation="sdr"` takes the permutation of best mean SDR (as `fast_bss_eval.sdr`
    and torchmetrics' PIT); `"sir"` takes mir_eval's (best mean SIR), which costs a larger linear
    system. The two only differ where an estimate is about as close to both references, which
    real separators' outputs are not.
    """
    sdr, scores = _sdr_and_selection_scores(est_sources, sources, lengths, permutation)
    _, perm = best_permutation(scores)
    return _take(sdr, perm), perm


@torch.no_grad()
def separation_metrics(
    mixture: torch.Tensor,
    sources: torch.Tensor,
    est_sources: torch.Tensor,
    lengths: torch.Tensor | None = None,
    snt_ids: Sequence[str] | None = None,
    compute_stoi: bool = False,
    sample_rate: int | None = None,
    sdr_permutation: str = "sdr",
    compute_pesq: bool = False,
) -> list[dict]:
    """One dict per utterance: `snt_id` (if given), `sdr`, `sdr_i`, `si-snr`, `si-snr_i`, then
    per-reference `sdr_s1`, ..., `sdr_i_s1`, ..., `si-snr_s1`, ..., `si-snr_i_s1`, ...

    Aggregates are means over speakers. `perm` (a tuple) is the SI-SNR permutation: reference k
    is estimate perm[k], so `est_sources[b, :, perm]` reorders estimates for saving. SDR picks
    its own permutation (`sdr_permutation`, see `pit_sdr`); the two almost always agree.
    With `compute_stoi` (`compute_pesq`), also `stoi`, `stoi_i` and `stoi_s1`, ... (`pesq`, ...): STOI
    (PESQ) of the SI-SNR-matched estimates, which needs `sample_rate`. PESQ is NaN where it cannot score
    an utterance (shorter than a quarter of a second, or without speech).
    """
    if est_sources.shape != sources.shape:
        raise ValueError(
            f"est_sources has shape {tuple(est_sources.shape)}, expected {tuple(sources.shape)} like sources"
        )
    if mixture.shape != sources.shape[:2]:
        raise ValueError(
            f"mixture has shape {tuple(mixture.shape)}, expected [batch, time] = {tuple(sources.shape[:2])}"
        )
    if snt_ids is not None and len(snt_ids) != sources.shape[0]:
        raise ValueError(f"got {len(snt_ids)} snt_ids for a batch of {sources.shape[0]}")
    if (compute_stoi or compute_pesq) and sample_rate is None:
        raise ValueError("compute_stoi=True and compute_pesq=True need sample_rate")
    if compute_pesq and sample_rate not in PESQ_MODES:
        raise ValueError(f"PESQ scores audio at {' or '.join(map(str, PESQ_MODES))} Hz, not {sample_rate} Hz")
    num_spks = sources.shape[-1]

    # The mixture joins as one more estimate: its scores against each reference are the baselines.
    # candidates [batch, time, num_spks + 1]
    candidates = torch.cat([est_sources.double(), mixture.double().unsqueeze(-1)], dim=-1)
    si_snr_pairs = pairwise_si_snr(candidates, sources, lengths, torch.float64)  # [batch, num_spks + 1, num_spks]
    sdr_pairs, selection_pairs = _sdr_and_selection_scores(candidates, sources, lengths, sdr_permutation)
    _, perm = best_permutation(si_snr_pairs[:, :num_spks])
    _, sdr_perm = best_permutation(selection_pairs[:, :num_spks])
    per_source = {"sdr": _take(sdr_pairs, sdr_perm), "si-snr": _take(si_snr_pairs, perm)}
    baselines = {"sdr": sdr_pairs[:, num_spks], "si-snr": si_snr_pairs[:, num_spks]}
    for name, scorer, wanted in (("stoi", _stoi_scorer, compute_stoi), ("pesq", _pesq_scorer, compute_pesq)):
        if wanted:
            score = scorer(sample_rate)
            per_source[name], baselines[name] = _score_each(score, mixture, sources, est_sources, perm, lengths)

    rows = []
    for b in range(sources.shape[0]):
        row = {} if snt_ids is None else {"snt_id": snt_ids[b]}
        for name in per_source:
            row[name] = per_source[name][b].mean().item()
            row[f"{name}_i"] = (per_source[name][b] - baselines[name][b]).mean().item()
        for name in per_source:
            row.update({f"{name}_s{k + 1}": value for k, value in enumerate(per_source[name][b].tolist())})
            gains = (per_source[name][b] - baselines[name][b]).tolist()
            row.update({f"{name}_i_s{k + 1}": value for k, value in enumerate(gains)})
        row["perm"] = tuple(perm[b].tolist())
        rows.append(row)
    return rows


def _score_each(
    score: Callable[[np.ndarray, np.ndarray], float],
    mixture: torch.Tensor,
    sources: torch.Tensor,
    est_sources: torch.Tensor,
    perm: torch.Tensor,
    lengths: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`score(reference, estimate)` [batch, num_spks] of the matched estimates and of the mixture, on true
    lengths (CPU)."""
    batch, time, num_spks = sources.shape
    true_lengths = length_mask(lengths, batch, time, torch.device("cpu"), torch.float64).sum(dim=1).long().tolist()
    sources, est_sources = sources.double().cpu().numpy(), est_sources.double().cpu().numpy()
    mixture, perm = mixture.double().cpu().numpy(), perm.cpu().numpy()
    scores = np.zeros((batch, num_spks))
    baselines = np.zeros((batch, num_spks))
    for b, length in enumerate(true_lengths):
        for k in range(num_spks):
            reference = sources[b, :length, k]
            scores[b, k] = score(reference, est_sources[b, :length, perm[b, k]])
            baselines[b, k] = score(reference, mixture[b, :length])
    return torch.from_numpy(scores), torch.from_numpy(baselines)


def _stoi_scorer(sample_rate: int) -> Callable[[np.ndarray, np.ndarray], float]:
    from pystoi import stoi  # optional dependency, only needed here

    return functools.partial(stoi, fs_sig=sample_rate)


PESQ_MODES = {8000: "nb", 16000: "wb"}  # the rates ITU-T P.862 is defined at: narrowband, wideband


def _pesq_scorer(sample_rate: int) -> Callable[[np.ndarray, np.ndarray], float]:
    from pesq import PesqError, pesq  # optional dependency, only needed here

    def score(reference: np.ndarray, estimate: np.ndarray) -> float:
        value = pesq(sample_rate, reference, estimate, PESQ_MODES[sample_rate], on_error=PesqError.RETURN_VALUES)
        return value if value >= 0 else math.nan  # negative: an error code (e.g. too short to score)

    return score


def summarize(rows: Sequence[dict], keys: Sequence[str] | None = None) -> dict[str, dict[str, float | None]]:
    """Per metric: mean, median, std (ddof=1), a t-based 95% confidence interval of the mean, count.

    `keys` defaults to every numeric column of the first row. With a single utterance, std is 0
    and the interval is None (undefined).
    """
    if not rows:
        raise ValueError("summarize got no rows")
    if keys is None:
        keys = [key for key, value in rows[0].items() if _is_number(value)]
    summary = {}
    for key in keys:
        values = np.array([row[key] for row in rows], dtype=np.float64)
        count = len(values)
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if count > 1 else 0.0
        if count > 1:
            half_width = float(stats.t.ppf(0.975, count - 1) * std / math.sqrt(count))
            ci_low, ci_high = mean - half_width, mean + half_width
        else:
            ci_low = ci_high = None
        summary[key] = {
            "mean": mean,
            "median": float(np.median(values)),
            "std": std,
            "ci95_low": ci_low,
            "ci95_high": ci_high,
            "count": count,
        }
    return summary


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def summary_name(csv_name: str) -> str:
    """The file name of the summary `write_test_results` writes beside a CSV of that name."""
    return f"{Path(csv_name).stem}_summary.json"


def write_test_results(rows: Sequence[dict], csv_path: str | Path, scored: dict | None = None) -> Path:
    """Write one CSV row per utterance (`snt_id` first, then the numeric metrics in row order)
    and the `summarize` output as `<csv stem>_summary.json` beside it, both or neither (replacing earlier
    results); returns the JSON path. Raises `speechsep.output_files.OutputError` if they cannot be written.

    `scored` says what was scored (e.g. the checkpoint, its epoch and the test set): under "scored" in the JSON.
    """
    if not rows:
        raise ValueError(f"no rows to write to {csv_path}")
    csv_path = Path(csv_path)
    metric_keys = [key for key, value in rows[0].items() if key != "snt_id" and _is_number(value)]
    columns = (["snt_id"] if "snt_id" in rows[0] else []) + metric_keys
    summary = summarize(rows, metric_keys)
    if scored is not None:
        summary["scored"] = scored
    json_path = csv_path.with_name(summary_name(csv_path.name))
    write_files(
        {csv_path: csv_content(rows, columns), json_path: text_content(json.dumps(summary, indent=2))}, overwrite=True
    )
    return json_path
