"""The demo that `make demo` runs: synthesise the corpus (once), train a small model on the CPU, evaluate it.

    python -m demo [--data-dir data] [--output-folder results/demo] [--any_train_override=value ...]
    python -m demo --recorded-speech RECORDINGS [--speaker-regex REGEX]   # + real voices

Run from the repository root: train.py runs as a script of the working directory, in its own process, as a user
runs it. Rerunning reuses the corpus and resumes (or reuses) the training through the recipe's checkpoints.
Extra `--key=value` arguments go to train.py, e.g. `--dynamic_mixing=True`. With `--recorded-speech`, the model
is also scored on two-speaker mixtures built from that folder of real recordings
(`speechsep.data.recorded_mixtures`), beside its synthetic test score.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from demo.corpus.synth_corpus import synthesize_corpus
from speechsep.data.recorded_mixtures import make_mixtures
from speechsep.evaluation.report import improvement_by_gender_pairing, make_figures
from speechsep.output_files import write_text

TRAIN_SCRIPT = Path("train.py")  # relative: the demo runs from the repository root
RECORDED_MIXTURES = 100
# The whole demo (corpus, training, test) fits DEMO_MINUTES: training gets what the corpus left, less a reserve for
# starting up and for the test stage, which run slower too when the machine is slow.
DEMO_MINUTES = 14.0
STARTUP_AND_TEST_MINUTES = 2.5
MIN_TRAIN_MINUTES = 2.0


def training_budget(corpus_seconds: float, train_overrides: list[str]) -> list[str]:
    """The `--train_budget_minutes` that keeps the demo within DEMO_MINUTES, unless the user set one."""
    if any(option.startswith("--train_budget_minutes") for option in train_overrides):
        return []
    minutes = max(DEMO_MINUTES - corpus_seconds / 60 - STARTUP_AND_TEST_MINUTES, MIN_TRAIN_MINUTES)
    return [f"--train_budget_minutes={minutes:.2f}"]


def train_py(config: Path, corpus: Path, output_folder: Path, *arguments: str) -> None:
    """Run train.py in its own process, as a user runs it, so its logging and threads are its own."""
    command = [
        sys.executable, str(TRAIN_SCRIPT), str(config),
        f"--data_folder={corpus}", f"--output_folder={output_folder}", *arguments,
    ]  # fmt: skip
    print("Running:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def score_recorded_speech(
    recordings: Path, speaker_regex: str | None, config: Path, corpus: Path, output_folder: Path
) -> dict:
    """The trained model's single-pass SI-SNRi on mixtures of the recorded voices (results in <output>/recorded)."""
    manifest = make_mixtures(recordings, output_folder / "recorded_mixtures", RECORDED_MIXTURES, 8000, speaker_regex)
    results_folder = output_folder / "recorded"
    train_py(
        config, corpus, output_folder, "--test_only", "--skip_prep=True", f"--test_data={manifest}",
        f"--results_folder={results_folder}", "--test_shifts=1", "--test_mixture_consistency=False",
        "--n_audio_to_save=5",
    )  # fmt: skip
    results = json.loads((results_folder / "test_results_summary.json").read_text())
    return {
        "si-snr_i": results["si-snr_i"]["mean"],
        "mixtures": results["si-snr_i"]["count"],
        "folder": str(recordings),
    }


def run_demo(
    data_dir: Path,
    output_folder: Path,
    config: Path,
    train_overrides: list[str],
    recordings: Path | None = None,
    speaker_regex: str | None = None,
) -> dict:
    """Corpus, training and evaluation, figures; returns the summary also written to demo_summary.json."""
    start = time.perf_counter()
    corpus = synthesize_corpus(data_dir)
    corpus_seconds = time.perf_counter() - start

    train_py(config, corpus, output_folder, *training_budget(corpus_seconds, train_overrides), *train_overrides)
    train_seconds = time.perf_counter() - start - corpus_seconds

    figures = make_figures(output_folder)
    results = json.loads((output_folder / "test_results_summary.json").read_text())
    summary = {
        "si-snr_i": results["si-snr_i"]["mean"],  # single pass, as published tables report
        "sdr_i": results["sdr_i"]["mean"],
        "si-snr_i_ci95": [results["si-snr_i"]["ci95_low"], results["si-snr_i"]["ci95_high"]],
        "test_mixtures": results["si-snr_i"]["count"],
        # beside the single-pass scores, never instead: with the config's test_shifts / mixture consistency
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
    if recordings is not None:
        summary["recorded_speech"] = score_recorded_speech(recordings, speaker_regex, config, corpus, output_folder)
    write_text(output_folder / "demo_summary.json", json.dumps(summary, indent=2), overwrite=True)
    return summary


def summary_line(summary: dict, output_folder: Path) -> str:
    """The single-pass score first, the test-time options' second, real voices beside them when measured."""
    pairing = summary["si-snr_i_by_gender_pairing"]
    with_options = summary["si-snr_i_with_test_options"]
    recorded = summary.get("recorded_speech")
    return (
        f"Demo: test SI-SNRi {summary['si-snr_i']:.2f} dB single pass"
        + (f" ({with_options:.2f} dB with the test-time options)" if with_options is not None else "")
        + (f", {recorded['si-snr_i']:.2f} dB on {recorded['mixtures']} mixtures of recorded voices" if recorded else "")
        + f"; SDRi {summary['sdr_i']:.2f} dB on {summary['test_mixtures']} synthetic mixtures of unseen speakers "
        f"({pairing['different_genders']['mean']:.2f} dB with talkers of different genders, "
        f"{pairing['same_gender']['mean']:.2f} dB with the same); corpus {summary['corpus_seconds'] / 60:.1f} min, "
        f"training + test {summary['train_and_test_seconds'] / 60:.1f} min. "
        f"Results: {summary['test_results']}; summary, figures and audio in {output_folder}"
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where the corpus is (made once)")
    parser.add_argument("--output-folder", type=Path, default=Path("results/demo"))
    parser.add_argument("--config", type=Path, default=Path("hparams/demo.yaml"))
    parser.add_argument("--recorded-speech", type=Path, default=None, help="a folder of real recordings to score on")
    parser.add_argument("--speaker-regex", default=None, help="speaker = first group of this regex on file stems")
    args, train_overrides = parser.parse_known_args(argv)
    if not TRAIN_SCRIPT.is_file():
        sys.exit(f"error: no {TRAIN_SCRIPT} in {Path.cwd()}; run the demo from the repository root: python -m demo")
    try:
        summary = run_demo(
            args.data_dir, args.output_folder, args.config, train_overrides, args.recorded_speech, args.speaker_regex
        )
    except subprocess.CalledProcessError as err:
        sys.exit(f"error: training failed (exit status {err.returncode}); see {args.output_folder}/log.txt")
    print(summary_line(summary, args.output_folder))
