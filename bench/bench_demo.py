"""Quality of the embedded demo: reads what `make demo` wrote (it does not train: a run takes ~12 min).

    make demo                                                        # results/demo (dynamic mixing)
    .venv/bin/python -m speechsep.demo --output-folder results/demo-static --dynamic_mixing=False --N_epochs=7
    python bench/bench_demo.py
"""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {"dynamic mixing (default)": REPO / "results" / "demo", "static mixing": REPO / "results" / "demo-static"}


def run(quick: bool = False) -> str:
    rows = []
    for name, folder in RUNS.items():
        summary_path = folder / "demo_summary.json"
        if not summary_path.is_file():
            rows.append(f"| {name} | not run (no {summary_path.relative_to(REPO)}) | | | | |")
            continue
        summary = json.loads(summary_path.read_text())
        low, high = summary["si-snr_i_ci95"]
        rows.append(
            f"| {name} | {summary['si-snr_i']:.2f} ({low:.2f}..{high:.2f}) | {summary['sdr_i']:.2f} "
            f"| {summary['test_mixtures']} | {summary['train_and_test_seconds'] / 60:.1f} "
            f"| {summary['corpus_seconds'] / 60:.1f} |"
        )
    return "\n".join([
        "## Embedded demo: test-set quality",
        "",
        "`hparams/demo.yaml` (Conv-TasNet, 0.32 M parameters) trained on the synthetic MiniLibri2Mix corpus and "
        "scored on its speaker-disjoint test split; figures from `results/*/demo_summary.json`, written by "
        "`speechsep.demo`. Same configuration and about the same number of optimizer steps: dynamic mixing "
        "18 epochs x 150 steps, static mixing (the corpus's 3000 training mixtures) 7 epochs x 375 steps.",
        "",
        "| training mixtures | SI-SNRi dB (95% CI) | SDRi dB | test mixtures | training + test (min) | corpus (min) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ])


if __name__ == "__main__":
    print(run())
