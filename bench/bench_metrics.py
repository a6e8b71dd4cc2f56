"""Scoring time per utterance: speechsep.evaluation.metrics vs the mir_eval scoring of upstream SpeechBrain.

Metrics only, no model: 4 s, 8 kHz utterances separated by a perturbed ratio mask
(`tests.speech`), 2 and 3 speakers. Upstream's WSJ0Mix recipe scores each
utterance with two `mir_eval.separation.bss_eval_sources` calls (estimates, then the mixture for
SDRi) plus PIT SI-SNR twice; `separation_metrics` gives the same numbers in one batched call.
`upstream_scores` and `time_upstream_scoring` are reusable for whole-test-set comparisons.

    python -m bench.bench_metrics --quick      # 2 utterances per speaker count: a smoke test
"""

import argparse
import contextlib
import json
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from unittest import mock

import fast_bss_eval
import numpy as np
import torch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from bench.markdown import section
from speechsep.evaluation import metrics
from speechsep.evaluation.bss_eval_fast import SDR_CLAMP_DB, SDR_FILTER_LENGTH, SDR_LOAD_DIAG, unit_norm_signals
from speechsep.evaluation.metrics import SDR_PERMUTATIONS, pit_sdr, separation_metrics
from tests.speech import mask_separation_example

SAMPLE_RATE = 8000
NUM_SAMPLES = 4 * SAMPLE_RATE
# mixture [1, time], sources [1, time, num_spks], est_sources [1, time, num_spks]
Utterance = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _mir_eval_with_permutation(sources: torch.Tensor, est_sources: torch.Tensor) -> tuple[np.ndarray, ...]:
    """mir_eval's (sdr, sir, sar, perm) of one utterance ([1, time, num_spks] tensors)."""
    from mir_eval.separation import bss_eval_sources

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in mir_eval 0.8
        return bss_eval_sources(sources[0].t().cpu().numpy(), est_sources[0].t().cpu().numpy())


def mir_eval_sdr(sources: torch.Tensor, est_sources: torch.Tensor) -> np.ndarray:
    """mir_eval SDR [num_spks] of one utterance ([1, time, num_spks] tensors), called as upstream does."""
    return _mir_eval_with_permutation(sources, est_sources)[0]


def upstream_scores(mixture: torch.Tensor, sources: torch.Tensor, est_sources: torch.Tensor) -> dict[str, float]:
    """Score one utterance the way upstream SpeechBrain's WSJ0Mix `save_results` does (batch size 1):
    sdr, sdr_i, si-snr, si-snr_i, with the mixture as the baseline estimate of every source."""
    mixture_signal = torch.stack([mixture] * sources.shape[-1], dim=-1)
    si_snr = -get_si_snr_with_pitwrapper(sources, est_sources)
    si_snr_mixture = -get_si_snr_with_pitwrapper(sources, mixture_signal)
    sdr = mir_eval_sdr(sources, est_sources)
    sdr_mixture = mir_eval_sdr(sources, mixture_signal)
    return {
        "sdr": float(sdr.mean()),
        "sdr_i": float(sdr.mean() - sdr_mixture.mean()),
        "si-snr": si_snr.item(),
        "si-snr_i": (si_snr - si_snr_mixture).item(),
    }


def time_upstream_scoring(utterances: Iterable[Utterance]) -> float:
    """Seconds to score every utterance with `upstream_scores` (two mir_eval calls each)."""
    start = time.perf_counter()
    for utterance in utterances:
        upstream_scores(*utterance)
    return time.perf_counter() - start


PUBLIC_API_OPTIONS = dict(filter_length=SDR_FILTER_LENGTH, clamp_db=SDR_CLAMP_DB, load_diag=SDR_LOAD_DIAG)


def public_api_pairwise_sdr(
    est_sources: torch.Tensor, sources: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """`bss_eval_fast.pairwise_sdr` through fast_bss_eval's public API: `fast_bss_eval.sdr_loss` (pairwise, one
    LU solve per reference) on the same padding-free unit-norm signals; [batch, num_est, num_spks] dB."""
    refs, ests = unit_norm_signals(est_sources, sources, lengths)
    return -fast_bss_eval.sdr_loss(ests, refs, pairwise=True, **PUBLIC_API_OPTIONS).transpose(1, 2)


@contextlib.contextmanager
def public_api_scoring() -> Iterator[None]:
    """`separation_metrics` (default SDR permutation) scores SDR with `public_api_pairwise_sdr` meanwhile."""
    with mock.patch.object(metrics, "pairwise_sdr", public_api_pairwise_sdr):
        yield


def public_api_sir_rule(est_sources: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`pit_sdr(..., permutation="sir")` through `fast_bss_eval.bss_eval_sources` (mir_eval's permutation)."""
    refs, ests = unit_norm_signals(est_sources, sources, None)
    sdr, _, _, perm = fast_bss_eval.bss_eval_sources(refs, ests, **PUBLIC_API_OPTIONS)
    return sdr, perm


def _best_of_interleaved(functions: dict[str, Callable[[], object]], rounds: int = 5) -> dict[str, float]:
    """Best milliseconds of each function over `rounds` rounds that call each once, in turn (the order
    reversed every other round), so that a machine whose speed drifts slows them alike."""
    best = {name: float("inf") for name in functions}
    for round_index in range(rounds):
        names = list(functions) if round_index % 2 == 0 else list(reversed(functions))
        for name in names:
            best[name] = min(best[name], 1000 * _seconds(functions[name])[0])
    return best


def _public_api_comparison(num_spks: int, count: int, batch_size: int) -> list[str]:
    """Table rows: scoring time with the fast path vs fast_bss_eval's public API, same process, interleaved,
    best of 5; checks that both give the same scores."""
    utterances = _make_utterances(num_spks, count)
    batches = [
        [torch.cat(tensors) for tensors in zip(*utterances[start : start + batch_size])]
        for start in range(0, count - batch_size + 1, batch_size)
    ]
    rows = []
    for label, inputs, size in (("1", utterances, 1), (str(batch_size), batches, batch_size)):
        fast, public, difference = [], [], 0.0
        for mixture, sources, est_sources in inputs:
            fast_rows = separation_metrics(mixture, sources, est_sources)
            with public_api_scoring():
                public_rows = separation_metrics(mixture, sources, est_sources)
            difference = max(difference, *(abs(a["sdr"] - b["sdr"]) for a, b in zip(fast_rows, public_rows)))
            best = _best_of_interleaved(
                {
                    "fast": lambda: separation_metrics(mixture, sources, est_sources),
                    "public": lambda: _with_public_api(separation_metrics, mixture, sources, est_sources),
                }
            )
            fast.append(best["fast"] / size)
            public.append(best["public"] / size)
        fast_ms, public_ms = statistics.median(fast), statistics.median(public)
        rows.append(
            f"| {num_spks} | `separation_metrics`, sdr rule | {label} | {fast_ms:.1f} | {public_ms:.1f} "
            f"| {public_ms / fast_ms:.2f}x | {difference:.1e} |"
        )
    fast, public, difference = [], [], 0.0
    for _, sources, est_sources in utterances:
        sdr, perm = pit_sdr(est_sources, sources, permutation="sir")
        public_sdr, public_perm = public_api_sir_rule(est_sources, sources)
        assert torch.equal(perm, public_perm), "the two SIR rules picked different speaker orders"
        difference = max(difference, (sdr - public_sdr).abs().max().item())
        best = _best_of_interleaved(
            {
                "fast": lambda: pit_sdr(est_sources, sources, permutation="sir"),
                "public": lambda: public_api_sir_rule(est_sources, sources),
            }
        )
        fast.append(best["fast"])
        public.append(best["public"])
    fast_ms, public_ms = statistics.median(fast), statistics.median(public)
    rows.append(
        f"| {num_spks} | `pit_sdr`, sir rule (estimates only) | 1 | {fast_ms:.1f} | {public_ms:.1f} "
        f"| {public_ms / fast_ms:.2f}x | {difference:.1e} |"
    )
    return rows


def _with_public_api(function: Callable, *args) -> object:
    with public_api_scoring():
        return function(*args)


def public_api_section(quick: bool = False) -> str:
    """The measurement behind keeping `speechsep.evaluation.bss_eval_fast` (see docs/experiments.md)."""
    count, batch_size = (2, 2) if quick else (8, 4)
    rows = [row for num_spks in (2, 3) for row in _public_api_comparison(num_spks, count, batch_size)]
    return section(
        "### Fast path vs fast_bss_eval's public API",
        f"The TEST stage's scoring with SDR from `speechsep.evaluation.bss_eval_fast` (Levinson recursion on "
        f"fast_bss_eval's correlation helpers) vs from `fast_bss_eval.sdr_loss(pairwise=True)` (its public API, "
        f"one LU solve per reference) on the same padding-free signals; and the SIR rule: `pit_sdr(permutation="
        f'"sir")` vs `fast_bss_eval.bss_eval_sources`. {count} mask-separated {NUM_SAMPLES // SAMPLE_RATE} s '
        f"{SAMPLE_RATE // 1000} kHz utterances, one process, each pair of calls interleaved (order alternating), "
        f"best of 5 per utterance, median over utterances; CPU, {torch.get_num_threads()} torch thread(s). "
        "Last column: largest |difference| of the scores.",
        "speakers | scoring | batch | fast path (ms/utt) | public API (ms/utt) | public / fast | max diff (dB)",
        rows,
    )


def _seconds(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _make_utterances(num_spks: int, count: int) -> list[Utterance]:
    utterances = []
    for seed in range(count):
        mixture, sources, est_sources = mask_separation_example(num_spks, NUM_SAMPLES, SAMPLE_RATE, seed)
        tensors = (torch.tensor(x, dtype=torch.float32).unsqueeze(0) for x in (mixture, sources, est_sources))
        utterances.append(tuple(tensors))
    return utterances


def _median_ms(function: Callable[[], object], repeats: int = 3) -> float:
    """Median milliseconds of `repeats` calls of `function`."""
    return 1000 * statistics.median(_seconds(function)[0] for _ in range(repeats))


def _measure(num_spks: int, count: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Milliseconds per utterance of each scorer (median over utterances of the median of 3 calls,
    after warm-up calls), and the largest difference to upstream's numbers; ours with each SDR
    permutation rule. Ours runs first: numpy's BLAS threads keep spinning for a while after each
    mir_eval call and would slow down whatever runs next on a small machine."""
    utterances = _make_utterances(num_spks, count)
    results = {}
    for rule in SDR_PERMUTATIONS:
        for _ in range(3):
            separation_metrics(*utterances[0], sdr_permutation=rule)
        ours = [_median_ms(lambda: separation_metrics(*utterance, sdr_permutation=rule)) for utterance in utterances]
        batched = []
        for start in range(0, count - batch_size + 1, batch_size):
            batch = [torch.cat(tensors) for tensors in zip(*utterances[start : start + batch_size])]
            batched.append(_median_ms(lambda: separation_metrics(*batch, sdr_permutation=rule)) / batch_size)
        rows = [separation_metrics(*utterance, sdr_permutation=rule)[0] for utterance in utterances]
        results[rule] = {"ours": statistics.median(ours), "ours_batched": statistics.median(batched), "rows": rows}

    upstream_scores(*utterances[0])
    mir_eval_once = [_median_ms(lambda: mir_eval_sdr(sources, est_sources)) for _, sources, est_sources in utterances]
    upstream = [_median_ms(lambda: upstream_scores(*utterance)) for utterance in utterances]
    expected_rows = [upstream_scores(*utterance) for utterance in utterances]
    for result in results.values():
        rows = result.pop("rows")
        result["max_difference"] = max(
            abs(row[key] - expected[key]) for row, expected in zip(rows, expected_rows) for key in expected
        )
        result["mir_eval"] = statistics.median(mir_eval_once)
        result["upstream"] = statistics.median(upstream)
    return results


DEMO_RUN = Path(__file__).resolve().parents[1] / "results" / "demo"


def trained_model_agreement(run_dir: Path = DEMO_RUN, limit: int | None = None) -> str:
    """Our SDR vs mir_eval's on a trained model's outputs: the demo model on its corpus's test mixtures.

    Needs a finished `make demo` (the run folder and its corpus); says so instead when there is none.
    """
    import pandas as pd
    import soundfile as sf

    from speechsep.inference.model_folder import load_separator

    title = "### Agreement with mir_eval on a trained model's outputs"
    summary_path = run_dir / "demo_summary.json"
    if not summary_path.is_file():
        return f"{title}\n\nNot measured: no finished demo run in {run_dir} (run `make demo` first).\n"
    corpus = Path(json.loads(summary_path.read_text())["corpus"])
    manifest = pd.read_csv(corpus / "wav8k" / "min" / "metadata" / "mixture_test_mix_clean.csv")[:limit]
    separator = load_separator(run_dir)
    differences = {rule: [] for rule in SDR_PERMUTATIONS}
    other_order = {rule: 0 for rule in SDR_PERMUTATIONS}
    mir_eval_sdrs = []
    for row in manifest.itertuples():
        mixture = torch.from_numpy(sf.read(row.mixture_path, dtype="float32")[0]).unsqueeze(0)
        sources = torch.stack(
            [torch.from_numpy(sf.read(path, dtype="float32")[0]) for path in (row.source_1_path, row.source_2_path)],
            dim=-1,
        ).unsqueeze(0)
        with torch.no_grad():
            est_sources = separator.separate_batch(mixture)[..., : mixture.shape[1], :]
        expected, _, _, expected_perm = _mir_eval_with_permutation(sources, est_sources)
        mir_eval_sdrs.append(expected.mean())
        for rule in SDR_PERMUTATIONS:
            sdr, perm = pit_sdr(est_sources, sources, permutation=rule)
            differences[rule].append(float(np.abs(sdr[0].numpy() - expected).max()))
            other_order[rule] += perm[0].tolist() != list(expected_perm)
    rows = [
        f"| {rule} | {max(differences[rule]):.1e} | {statistics.median(differences[rule]):.1e} "
        f"| {other_order[rule]} of {len(manifest)} |"
        for rule in SDR_PERMUTATIONS
    ]
    return section(
        title,
        f"The trained demo model (`{run_dir.name}`) separates the {len(manifest)} test mixtures of its corpus; "
        f"per-source SDR of `speechsep.evaluation.metrics.pit_sdr` vs `mir_eval.separation.bss_eval_sources` (mean mir_eval "
        f"SDR {np.mean(mir_eval_sdrs):.2f} dB).",
        "SDR permutation | max abs difference (dB) | median abs difference (dB) | mixtures where the speaker order differs",
        rows,
    )


def run(quick: bool = False) -> str:
    count, batch_size = (2, 2) if quick else (8, 4)
    rows = [
        f"| {num_spks} | {rule} | {result['ours']:.1f} | {result['ours_batched']:.1f} "
        f"| {result['mir_eval']:.0f} | {result['upstream']:.0f} | {result['mir_eval'] / result['ours']:.1f}x "
        f"| {result['upstream'] / result['ours']:.1f}x | {result['max_difference']:.1e} |"
        for num_spks in (2, 3)
        for rule, result in _measure(num_spks, count, batch_size).items()
    ]
    scoring = section(
        "## Metrics: scoring time per utterance",
        f"`speechsep.evaluation.metrics.separation_metrics` (SDR, SDRi, SI-SNR, SI-SNRi in one call) vs one "
        f"`mir_eval.separation.bss_eval_sources` call (SDR of the estimates only) and vs upstream SpeechBrain's "
        f"per-utterance scoring (2 mir_eval calls + 2 PIT SI-SNR: the same four numbers), on {count} "
        f"mask-separated {NUM_SAMPLES // SAMPLE_RATE} s {SAMPLE_RATE // 1000} kHz utterances; medians after "
        f"warm-up, CPU, {torch.get_num_threads()} torch thread(s), numpy BLAS threads as configured by the "
        f"environment. *SDR permutation*: `sdr` (default, best mean SDR) or `sir` (mir_eval's rule, one more "
        f"linear system of 512 x speakers). Last column: largest |ours - upstream| over sdr, sdr_i, si-snr, si-snr_i.",
        f"speakers | SDR permutation | ours, batch 1 (ms) | ours, batch {batch_size} (ms/utt) "
        "| mir_eval, 1 call (ms) | upstream scoring (ms) | speed-up vs 1 mir_eval call | speed-up vs upstream "
        "| max diff (dB)",
        rows,
    )
    return "\n".join([scoring, public_api_section(quick), trained_model_agreement(limit=10 if quick else None)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 utterances per speaker count (smoke run)")
    print(run(quick=parser.parse_args().quick))
