"""Whole-test-set evaluation time: the recipe's single pass vs upstream SpeechBrain's two passes.

Upstream evaluates the test set twice, batch size 1: `evaluate` (forward + SI-SNR loss), then
`save_results` (forward again, then per utterance two mir_eval `bss_eval_sources` calls and PIT SI-SNR
twice). The recipe's TEST stage runs one forward per utterance (on its true length, so padding never
changes a score) and scores the whole batch with one `speechsep.evaluation.metrics.separation_metrics` call. Both with the demo model (`hparams/demo.yaml`, random weights:
the scoring cost does not depend on the quality) on 4 s, 8 kHz speech-like mixtures.

    python -m bench.bench_evaluation --quick
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_metrics import public_api_scoring, upstream_scores
from bench.markdown import section
from speechsep.evaluation.metrics import separation_metrics
from speechsep.inference.separation import separate_each
from speechsep.training.config import load_hparams
from speechsep.training.losses import pit_si_snr_loss
from tests.speech import speech_like_mixture
from train import Separation

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 8000
SECONDS = 4


def demo_separator(num_spks: int) -> Separation:
    hparams = load_hparams(
        REPO / "hparams" / "demo.yaml",
        {"data_folder": "unused", "output_folder": tempfile.mkdtemp(), "num_spks": num_spks},
    )
    brain = Separation(modules=hparams["modules"], hparams=hparams, run_opts={"device": "cpu"})
    brain.modules.eval()
    return brain


def test_set(num_spks: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mixture [1, time], sources [1, time, num_spks]) pairs."""
    import numpy as np

    pairs = []
    for seed in range(count):
        mixture, sources = speech_like_mixture(
            SECONDS * SAMPLE_RATE, num_spks, SAMPLE_RATE, np.random.default_rng(seed)
        )
        pairs.append(
            (torch.tensor(mixture, dtype=torch.float32)[None], torch.tensor(sources, dtype=torch.float32)[None])
        )
    return pairs


@torch.no_grad()
def single_pass(brain: Separation, pairs, batch_size: int) -> float:
    start = time.perf_counter()
    for first in range(0, len(pairs), batch_size):
        mixture = torch.cat([m for m, _ in pairs[first : first + batch_size]])
        sources = torch.cat([s for _, s in pairs[first : first + batch_size]])
        # as the TEST stage does
        est_sources = separate_each(lambda u: brain.separate(u).float(), mixture, torch.ones(len(mixture)))[0]
        pit_si_snr_loss(est_sources, sources)
        separation_metrics(mixture, sources, est_sources)
    return time.perf_counter() - start


@torch.no_grad()
def upstream_two_passes(brain: Separation, pairs) -> float:
    start = time.perf_counter()
    for mixture, sources in pairs:  # evaluate()
        pit_si_snr_loss(brain.separate(mixture), sources)
    for mixture, sources in pairs:  # save_results()
        upstream_scores(mixture, sources, brain.separate(mixture))
    return time.perf_counter() - start


def run(quick: bool = False) -> str:
    count = 4 if quick else 20
    rows = []
    for num_spks in (2, 3):
        brain = demo_separator(num_spks)
        pairs = test_set(num_spks, count)
        single_pass(brain, pairs[:2], 2)  # warm-up
        ours_1 = ours_4 = public_1 = math.inf
        for _ in range(3):  # best of three, interleaved with the public-API run of the same pass
            ours_1 = min(ours_1, single_pass(brain, pairs, 1))
            with public_api_scoring():
                public_1 = min(public_1, single_pass(brain, pairs, 1))
            ours_4 = min(ours_4, single_pass(brain, pairs, 4))
        upstream = upstream_two_passes(brain, pairs)
        rows.append(
            f"| {num_spks} | {ours_1:.1f} | {ours_4:.1f} | {public_1:.1f} | {upstream:.1f} | {upstream / ours_1:.1f}x "
            f"| {upstream / ours_4:.1f}x |"
        )
    return section(
        "## Evaluation: whole test set, one pass vs upstream's two passes",
        f"{count} mixtures of {SECONDS} s at {SAMPLE_RATE // 1000} kHz, demo model, CPU, "
        f"{torch.get_num_threads()} torch thread(s). Ours: one forward per utterance + one `separation_metrics` call per batch; "
        "upstream: forward + loss for every mixture, then forward + 2 mir_eval calls + 2 PIT SI-SNR. Ours: best of three "
        "runs; *public API*: ours with SDR from `fast_bss_eval.sdr_loss` instead of `speechsep.evaluation.bss_eval_fast` "
        "(`bench.bench_metrics.public_api_scoring`), each run interleaved with ours.",
        "speakers | ours, batch 1 (s) | ours, batch 4 (s) | ours with the public API, batch 1 (s) "
        "| upstream two passes (s) | speed-up (batch 1) | speed-up (batch 4)",
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))
