"""The embedded demo: synthesise the corpus (once), train a small model on the CPU, evaluate it, report.

    python -m speechsep.corpus.demo [--data-dir data] [--output-folder results/demo] [--any_train_override=value ...]

This is what `make demo` runs. Rerunning reuses the corpus and resumes (or reuses) the training through
the recipe's checkpoints. Extra `--key=value` arguments go to train.py, e.g. `--dynamic_mixing=True`.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from speechsep.corpus.synth_corpus import synthesize_corpus
from speechsep.evaluation.report import improvement_by_gender_pairing, make_figures

REPO = Path(__file__).resolve().parents[2]


def run_demo(data_dir: Path, output_folder: Path, config: Path, train_overrides: list[str]) -> dict:
    """Corpus, training and evaluation, figures; returns the summary also written to demo_summary.json."""
    start = time.perf_counter()
    corpus = synthesize_corpus(data_dir)
    corpus_seconds = time.perf_counter() - start

    command = [
        sys.executable,
        str(REPO / "train.py"),
        str(config),
        f"--data_folder={corpus}",
        f"--output_folder={output_folder}",
        *train_overrides,
    ]
    print("Training and evaluating:", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    train_seconds = time.perf_counter() - start - corpus_seconds

    figures = make_figures(output_folder)
    results = json.loads((output_folder / "test_results_summary.json").read_text())
    summary = {
        "si-snr_i": results["si-snr_i"]["mean"],
        "sdr_i": results["sdr_i"]["mean"],
        "si-snr_i_ci95": [results["si-snr_i"]["ci95_low"], results["si-snr_i"]["ci95_high"]],
        "test_mixtures": results["si-snr_i"]["count"],
        # beside the single-pass scores above, never instead: with the config's test_shifts / mixture consistency
        "si-snr_i_with_test_options": results.get("with_test_options_si-snr_i", {}).get("mean"),
        "si-snr_i_by_gender_pairing": improvement_by_gender_pairing(
            output_folder / "test_results.csv", corpus / "sources" / "speakers.csv"
        ),
        "corpus": str(corpus),
        "corpus_seconds": round(corpus_seconds, 1),
        "train_and_test_seconds": round(train_seconds, 1),
        "test_results": str(output_folder / "test_results.csv"),
        "figures": [str(path) for path in figures],
        "audio_examples": str(output_folder / "audio"),
        "train_overrides": train_overrides,
    }
    (output_folder / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data", help="where the corpus is (made once)")
    parser.add_argument("--output-folder", type=Path, default=REPO / "results" / "demo")
    parser.add_argument("--config", type=Path, default=REPO / "hparams" / "demo.yaml")
    args, train_overrides = parser.parse_known_args()
    try:
        summary = run_demo(args.data_dir, args.output_folder, args.config, train_overrides)
    except subprocess.CalledProcessError as err:
        sys.exit(f"error: training failed (exit status {err.returncode}); see {args.output_folder}/log.txt")
    pairing = summary["si-snr_i_by_gender_pairing"]
    print(
        f"Demo: test SI-SNRi {summary['si-snr_i']:.2f} dB, SDRi {summary['sdr_i']:.2f} dB (single pass; "
        f"{summary['si-snr_i_with_test_options']:.2f} dB SI-SNRi with the test-time options) on "
        f"{summary['test_mixtures']} mixtures of unseen speakers "
        f"({pairing['different_genders']['mean']:.2f} dB with talkers of different genders, "
        f"{pairing['same_gender']['mean']:.2f} dB with the same); corpus {summary['corpus_seconds'] / 60:.1f} min, "
        f"training + test {summary['train_and_test_seconds'] / 60:.1f} min. "
        f"Results: {summary['test_results']}; summary, figures and audio in {args.output_folder}"
    )


if __name__ == "__main__":
    main()
