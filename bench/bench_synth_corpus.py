"""Synthetic corpus generation: wall time with 2 workers, and CPU cost per utterance and mixture."""

import argparse
import csv
import tempfile
import time
from pathlib import Path

from bench.markdown import section
from demo.corpus import synth_corpus
from demo.corpus.corpus_folder import read_manifest
from demo.corpus.synth_corpus import SIZE_PRESETS, SPLITS, CorpusOptions, synthesize_corpus

NUM_WORKERS = 2


def _cpu_seconds_per_item(root: Path, options: CorpusOptions, num_speakers: int, num_mixtures: int):
    """CPU seconds per pool utterance and per mixture, timed serially in this process.

    Load-independent, unlike the wall time: (items x cost) / workers is what a quiet machine takes.
    """
    speakers = list(enumerate(synth_corpus.design_speakers(options)))[:num_speakers]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.process_time()
        rows = synth_corpus.synthesize_speakers(speakers, options, Path(tmp))
        per_utterance = (time.process_time() - start) / len(rows)

        utterances: dict[str, list[Path]] = {}
        with open(root / "sources" / "utterances.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        for row in rows:
            if row["split"] == "train":
                utterances.setdefault(row["speaker_id"], []).append(Path(row["path"]))
        plans = synth_corpus.plan_mixtures("train", utterances, options)[:num_mixtures]
        split_dir = Path(tmp) / options.wav_dir / "train-360"
        for track in ("s1", "s2", "noise", "mix_clean", "mix_both"):
            (split_dir / track).mkdir(parents=True)
        start = time.process_time()
        for plan in plans:
            synth_corpus.render_mixture(plan, options, Path(tmp))
        per_mixture = (time.process_time() - start) / len(plans)
    return per_utterance, per_mixture


def run(quick: bool = False) -> str:
    """Generate the default corpus (tiny with --quick) and report its size and generation cost."""
    size = "tiny" if quick else "default"
    sizes = SIZE_PRESETS[size]
    options = CorpusOptions(**sizes)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = synthesize_corpus(tmp, num_workers=NUM_WORKERS, **sizes)
        wall = time.perf_counter() - start
        summary = read_manifest(root)["summary"]
        per_utterance, per_mixture = _cpu_seconds_per_item(
            root, options, num_speakers=2 if quick else 8, num_mixtures=5 if quick else 200
        )
    num_utterances = summary["utterances"]
    num_mixtures = sum(summary["mixtures"].values())
    quiet_estimate = (num_utterances * per_utterance + num_mixtures * per_mixture) / NUM_WORKERS
    caveat = " (--quick: the tiny test size, startup-dominated)" if quick else ""
    mixtures = "/".join(str(summary["mixtures"][split]) for split in SPLITS)
    speakers = "/".join(str(summary["speakers"][split]) for split in SPLITS)
    hours = sum(summary["mixture_hours"].values())
    return section(
        "## Synthetic corpus generation",
        f"`synthesize_corpus` with the `{size}` size{caveat}, {NUM_WORKERS} worker processes, 8 kHz, "
        "2 speakers, min mode. Wall time depends on what else runs on the machine; the CPU costs "
        "are timed serially in one process, and the estimate divides the total CPU work by the "
        "workers (what a quiet machine takes, process start-up aside).",
        "speakers train/dev/test | pool utterances | pool hours | mixtures train/dev/test "
        "| mixture hours | MB on disk | wall s | CPU ms / utterance | CPU ms / mixture "
        "| quiet estimate s",
        [
            f"| {speakers} | {num_utterances} | {summary['source_hours']:.2f} | {mixtures} | {hours:.2f} "
            f"| {summary['megabytes']:.0f} | {wall:.1f} | {1000 * per_utterance:.1f} "
            f"| {1000 * per_mixture:.1f} | {quiet_estimate:.0f} |"
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny corpus: a smoke test")
    print(run(quick=parser.parse_args().quick))
