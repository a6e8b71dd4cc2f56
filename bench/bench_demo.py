"""Quality of the embedded demo: reads what `make demo` wrote (it does not train: a run takes ~14 min).

make demo                                                        # results/demo (dynamic mixing)
.venv/bin/python -m speechsep.corpus.demo --output-folder results/demo-static --dynamic_mixing=False --N_epochs=22
python bench/bench_demo.py
"""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "dynamic mixing (default), 13 epochs x 630 steps": REPO / "results" / "demo",
    "static mixing, 22 epochs x 375 steps (0.7% more steps)": REPO / "results" / "demo-static",
}


def run(quick: bool = False) -> str:
    rows = []
    for name, folder in RUNS.items():
        summary_path = folder / "demo_summary.json"
        if not summary_path.is_file():
            rows.append(f"| {name} | not run (no {summary_path.relative_to(REPO)}) | | | | | |")
            continue
        summary = json.loads(summary_path.read_text())
        low, high = summary["si-snr_i_ci95"]
        pairing = summary.get("si-snr_i_by_gender_pairing")  # absent from runs made before it existed
        by_pairing = (
            f"{pairing['different_genders']['mean']:.2f} / {pairing['same_gender']['mean']:.2f}" if pairing else "—"
        )
        rows.append(
            f"| {name} | {summary['si-snr_i']:.2f} ({low:.2f}..{high:.2f}) | {summary['sdr_i']:.2f} | {by_pairing} "
            f"| {summary['test_mixtures']} | {summary['train_and_test_seconds'] / 60:.1f} "
            f"| {summary['corpus_seconds'] / 60:.1f} |"
        )
    return "\n".join(
        [
            "## Embedded demo: test-set quality",
            "",
            "`hparams/demo.yaml` (Conv-TasNet, 0.32 M parameters) trained on the synthetic MiniLibri2Mix corpus and "
            "scored on its speaker-disjoint test split; figures from `results/*/demo_summary.json`, written by "
            "`speechsep.corpus.demo`. The learning rate is held for the first half of the epochs, then decays linearly; "
            "training runs under bf16 autocast on CPUs with native bf16 (fp32 otherwise); test scores average 8 "
            "sub-hop shifts of each mixture (`test_shifts`). Same configuration; static mixing "
            "draws 1 s crops from the corpus's 3000 training mixtures (375 steps per epoch), dynamic mixing makes "
            "5040 mixtures per epoch (630 steps).",
            "",
            "| training mixtures | SI-SNRi dB (95% CI) | SDRi dB | SI-SNRi dB, different / same-gender talkers "
            "| test mixtures | training + test (min) | corpus (min) |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
