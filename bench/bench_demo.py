"""Quality of the embedded demo: reads what `make demo` wrote, so that the report has it (it does not train).

    make demo                                                                    # results/demo
    .venv/bin/python -m demo --output-folder results/demo-static --dynamic_mixing=False
    python -m bench.bench_demo

A run made with `--recorded-speech RECORDINGS` also has its score on mixtures of those real voices.
"""

import json
from pathlib import Path

from bench.markdown import section

RUNS = {  # relative: the benchmarks run from the repository root
    "dynamic mixing (default)": Path("results/demo"),
    "static mixing (the corpus's training mixtures)": Path("results/demo-static"),
}


def _row(name: str, folder: Path) -> str:
    summary_path = folder / "demo_summary.json"
    if not summary_path.is_file():
        return f"| {name} | not run (no {summary_path}) | | | | | | | |"
    summary = json.loads(summary_path.read_text())
    low, high = summary["si-snr_i_ci95"]
    pairing = summary.get("si-snr_i_by_gender_pairing")
    by_pairing = (
        f"{pairing['different_genders']['mean']:.2f} / {pairing['same_gender']['mean']:.2f}" if pairing else "—"
    )
    with_options = summary.get("si-snr_i_with_test_options")
    options_cell = f"{with_options:.2f}" if with_options is not None else "—"
    recorded = summary.get("recorded_speech")
    recorded_cell = f"{recorded['si-snr_i']:.2f} ({recorded['mixtures']})" if recorded else "not measured"
    return (
        f"| {name} | {summary['si-snr_i']:.2f} ({low:.2f}..{high:.2f}) | {options_cell} | {recorded_cell} "
        f"| {summary['sdr_i']:.2f} | {by_pairing} | {summary['test_mixtures']} "
        f"| {summary['train_and_test_seconds'] / 60:.1f} | {summary['corpus_seconds'] / 60:.1f} |"
    )


def run(quick: bool = False) -> str:
    return section(
        "## Embedded demo: test-set quality",
        "`hparams/demo.yaml` (Conv-TasNet, 0.32 M parameters) trained within its wall-clock budget on the "
        "synthetic MiniLibri2Mix corpus and scored on its speaker-disjoint test split; figures from "
        "`results/*/demo_summary.json`, written by `python -m demo`. SI-SNRi is one plain pass per "
        "mixture; beside it, with the config's test-time options (8 sub-hop shifts, mixture consistency), and on "
        "two-speaker mixtures of real recorded voices when the run was given `--recorded-speech` (how many "
        "mixtures in brackets).",
        "training mixtures | SI-SNRi dB (95% CI) | with test-time options | recorded voices | SDRi dB "
        "| SI-SNRi dB, different / same-gender talkers | test mixtures | training + test (min) | corpus (min)",
        [_row(name, folder) for name, folder in RUNS.items()],
    )


if __name__ == "__main__":
    print(run())
