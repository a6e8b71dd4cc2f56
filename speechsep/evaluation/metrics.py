"""Separation metrics for the TEST stage: SDR, SI-SNR, their improvements, optional STOI and PESQ.

Everything is computed in one pass over a padded batch. Each utterance is scored on its true
length only (padding is zeroed, and zeros do not change correlations), so results do not depend
on the batch size. Shapes follow SpeechBrain: `mixture` [batch, time], `sources` and `est_sources`
[batch, time, num_spks], `lengths` relative in (0, 1].

- SI-SNR follows `speechbrain.nnet.losses.cal_si_snr` (zero-mean, EPS=1e-8 conventions), and the
  permutation is the best mean SI-SNR, as with `get_si_snr_with_pitwrapper` (which returns its
  negative).
- SDR is BSS-eval v3 `bss_eval_sources` (512-tap distortion filter), as
  `mir_eval.separation.bss_eval_sources` (deprecated, gone in mir_eval 0.9), in float64
  (`speechsep.evaluation.bss_eval_fast`). The permutation is the best mean SDR by default (one
  512 x 512 system per reference); mir_eval's rule, best mean SIR, is available
  (`sdr_permutation="sir"`) at a few times the cost.
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
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from speechsep.evaluation.bss_eval_fast import check_signals, pairwise_bss_eval, pairwise_sdr
from speechsep.inference.counting import CountingRule, count_talkers
from speechsep.inference.separation import match_mixture_level
from speechsep.output_files import csv_content, text_content, write_files
from speechsep.training.losses import (
    active_references,
    best_permutation,
    length_mask,
    pairwise_si_snr,
    relative_level_db,
    true_lengths,
)


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
    check_signals(est_sources, sources)
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


def talker_metrics(
    mixture: torch.Tensor,
    sources: torch.Tensor,
    est_sources: torch.Tensor,
    lengths: torch.Tensor | None = None,
    snt_ids: Sequence[str] | None = None,
    sample_rate: int | None = None,
    counting_rule: CountingRule | None = None,
    **options,
) -> list[dict]:
    """`separation_metrics` for mixtures of fewer talkers than outputs: each utterance is scored on the references
    that hold a talker (`active_references`) against the outputs that match them best, and gets `talkers` (how many
    it holds), `talkers_found` (how many `speechsep.inference.counting` finds in the estimates, as separate.py
    does) and `silent_output_db` (the loudest of the other outputs relative to the mixture; NaN when none is left),
    both on the estimates brought to the mixture's level as separate.py writes them (`match_mixture_level`).
    Per-reference columns run to the number of outputs (NaN beyond the talkers). Where the mixture is its one
    talker alone, improvements are undefined (NaN): the mixture is already the source."""
    if sample_rate is None:
        raise ValueError("talker_metrics needs sample_rate (to count the talkers in the estimates)")
    batch, time, num_outputs = est_sources.shape
    rows = []
    for b, num_samples in enumerate(true_lengths(lengths, time).tolist() if lengths is not None else [time] * batch):
        mix, refs, ests = (
            mixture[b : b + 1, :num_samples],
            sources[b : b + 1, :num_samples],
            est_sources[b : b + 1, :num_samples],
        )
        active = active_references(refs)[0].nonzero().flatten().tolist()
        if not active:
            snt = f" {snt_ids[b]}" if snt_ids is not None else ""
            raise ValueError(f"test mixture{snt} has no talker: every reference is silent")
        refs = refs[..., active]
        pairwise = pairwise_si_snr(ests, refs, dtype=torch.float64)[0]  # [num_outputs, talkers]
        chosen = max(
            itertools.permutations(range(num_outputs), len(active)),
            key=lambda outputs: float(pairwise[list(outputs), range(len(active))].sum()),
        )
        row = separation_metrics(
            mix,
            refs,
            ests[..., list(chosen)],
            None,
            None if snt_ids is None else [snt_ids[b]],
            sample_rate=sample_rate,
            **options,
        )[0]
        if len(active) == 1 and torch.allclose(mix[0], refs[0, :, 0], rtol=0, atol=1e-7):
            row.update({key: math.nan for key in row if key.endswith("_i") or "_i_s" in key})
        row = _per_reference(row, active, num_outputs)
        others = [k for k in range(num_outputs) if k not in chosen]
        heard = match_mixture_level(ests, mix)[0].cpu()  # as separate.py writes them: at the mixture's level
        levels = relative_level_db(heard.unsqueeze(0).double(), mix.cpu().double())[0].tolist()
        perm, spare = [None] * num_outputs, iter(others)
        for reference in range(num_outputs):  # reference k -> its estimate; a silent reference gets a spare output
            perm[reference] = chosen[active.index(reference)] if reference in active else next(spare)
        row["perm"] = tuple(perm)
        row["talkers"] = len(active)
        row["talkers_found"] = count_talkers(heard, mix[0], sample_rate, counting_rule).talkers
        row["silent_output_db"] = max((levels[k] for k in others), default=math.nan)
        rows.append(row)
    return rows


def _per_reference(row: dict, active: list[int], num_outputs: int) -> dict:
    """A row scored on the active references only (`_s1` ... for each in turn) with its per-reference columns put
    back at each reference's number, NaN for the silent ones, in reference order."""
    per_reference = re.compile(r"^(.*)_s(\d+)$")
    names = list(dict.fromkeys(m.group(1) for key in row if (m := per_reference.match(key))))
    result = {key: value for key, value in row.items() if not per_reference.match(key)}
    for name in names:
        for reference in range(num_outputs):
            value = row[f"{name}_s{active.index(reference) + 1}"] if reference in active else math.nan
            result[f"{name}_s{reference + 1}"] = value
    return result


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
        values = values[~np.isnan(values)]  # undefined for some rows (an improvement over a one-talker mixture)
        count = len(values)
        if count == 0:
            summary[key] = {"mean": None, "median": None, "std": None, "ci95_low": None, "ci95_high": None, "count": 0}
            continue
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


MAIN_METRICS = ("sdr", "sdr_i", "si-snr", "si-snr_i")  # the test stage's headline scores
TEST_OPTIONS_PREFIX = "with_test_options_"  # columns scored with test_shifts / test_mixture_consistency


def test_scores(
    mixture: torch.Tensor,
    sources: torch.Tensor,
    est_sources: torch.Tensor,
    lengths: torch.Tensor,
    snt_ids: Sequence[str],
    est_sources_with_options: torch.Tensor | None = None,
    variable_talkers: bool = False,
    **options,
) -> list[dict]:
    """The test stage's rows: `separation_metrics` of the plain pass's estimates (scored in float32), and where
    test-time options made other estimates, their main metrics beside (never instead), under `TEST_OPTIONS_PREFIX`.
    `variable_talkers`: mixtures may hold fewer talkers than outputs (`talker_metrics`)."""
    score = talker_metrics if variable_talkers else separation_metrics
    rows = score(mixture, sources, est_sources.float(), lengths, snt_ids, **options)
    if est_sources_with_options is not None:
        scored = score(mixture, sources, est_sources_with_options.float(), lengths, snt_ids, **options)
        for row, with_options in zip(rows, scored):
            row.update({f"{TEST_OPTIONS_PREFIX}{key}": with_options[key] for key in MAIN_METRICS})
    return rows


def main_means(rows: Sequence[dict]) -> dict[str, float]:
    """The means of the main metrics (and of their test-time-options columns, where scored), to 3 decimals."""
    keys = [key for key in [*MAIN_METRICS, *(TEST_OPTIONS_PREFIX + key for key in MAIN_METRICS)] if key in rows[0]]
    return {key: round(value["mean"], 3) for key, value in summarize(rows, keys).items() if value["mean"] is not None}


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
