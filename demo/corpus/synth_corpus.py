"""An offline synthetic multi-speaker corpus in the exact LibriMix layout.

WSJ0 is licensed and LibriMix is hundreds of GB, so the demo, the tests and CI use this corpus
instead: eSpeak NG speakers (voice variant x accent x pitch x intonation range x rate) read
random sentences, and the mixtures are written exactly like LibriMix's, so that the same
data-preparation code reads both::

    MiniLibri2Mix/
        wav8k/min/{train-360,dev,test}/{mix_clean,mix_both,s1,s2,noise}/<mixture_ID>.wav
        wav8k/min/metadata/mixture_<split>_{mix_clean,mix_both}.csv   (LibriMix's own place)
        metadata -> wav8k/min/metadata                                 (shortcut)
        sources/{train,dev,test}/<speaker_id>/<utterance_id>.wav       (for dynamic mixing)
        sources/speakers.csv, sources/utterances.csv
        synth_corpus.json                                              (options + summary)

Levels follow LibriMix: every source at a random loudness in [-33, -25] LUFS, the noise in
[-38, -30] LUFS, and everything scaled together when a mixture would peak above 0.9. The
mixtures are integer sums of the written PCM_16 sources, so ``mix_clean == s1 + s2`` and
``mix_both == s1 + s2 + noise`` hold exactly. Paths in the CSVs are absolute, like LibriMix's.

One corpus root holds one set of options: running again with the same options on a complete
corpus does nothing; with other options it fails, unless ``overwrite=True`` replaces it. An
interrupted generation is detected (manifest not marked complete) and started over. Neither
replacement happens while the root holds anything the generator does not write (the user's
notes or results): it fails naming them instead. One
generation at a time per root: a second one while the first runs fails, naming the first's
process (a lock file beside the root, ``.MiniLibri<n>Mix.lock``, released when it ends).

Usage::

    python -m demo.corpus.synth_corpus data/            # the default size, what the demo trains on
    python -m demo.corpus.synth_corpus data/ --size tiny --num-spks 3 --sample-rate 16000
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from demo.corpus.corpus_folder import (
    CorpusInUseError,
    disk_megabytes,
    manifest_identity,
    prepare_root,
    read_manifest,
    write_manifest,
)
from demo.corpus.mixtures import MixturePlan, metadata_row, plan_mixtures, render_mixture
from demo.corpus.options import (
    MIX_TYPES,
    SIZE_PRESETS,
    SPEAKERS_PER_PROCESS,
    SPLIT_FOLDERS,
    SPLITS,
    CorpusOptions,
    corpus_root,
)
from demo.corpus.utterances import synthesize_speakers
from demo.corpus.voices import design_speakers
from speechsep.locking import LockHeld, acquire, release
from speechsep.output_files import OutputError, write_csv

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# The whole corpus
# ----------------------------------------------------------------------------------------


# Imported once by the forkserver that starts the workers (not this module itself: the
# workers import it as their main module, and a preloaded copy would make runpy warn).
_WORKER_IMPORTS = (
    "numpy",
    "scipy.fft",
    "scipy.signal",
    "soundfile",
    "pyloudnorm",
    "demo.corpus.espeak",
    "speechsep.data.loudness",
    "demo.corpus.sentences",
    "demo.corpus.synth_noise",
    "demo.corpus.voice_variation",
    "demo.corpus.utterances",  # imports torch (through speechsep.data.audio): seconds per fresh worker
    "demo.corpus.mixtures",
)


def _process_context() -> multiprocessing.context.BaseContext:
    """Start workers from a clean process (forkserver, else spawn), never by forking us.

    A forked worker would inherit this process's eSpeak NG state, which differs after any
    synthesis here (tests do that), and the audio would depend on the caller's history.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that has imported the heavy modules once.
        context.set_forkserver_preload(list(_WORKER_IMPORTS))
        return context
    return multiprocessing.get_context("spawn")


def _default_num_workers() -> int:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, usable or 1)


# sources/speakers.csv: a SyntheticSpeaker's fields, with its eSpeak voice name after the split.
SPEAKER_COLUMNS = (
    *("speaker_id", "split", "voice", "language", "variant", "gender", "pitch", "pitch_range", "rate"),
    *("formant_scale", "wobble", "breath_db"),
)


def _synthesize_pool(context, num_workers: int, options: CorpusOptions, root: Path) -> list[dict]:
    """Write ``sources/``: every utterance of every speaker, plus speakers.csv and utterances.csv."""
    speakers = design_speakers(options)
    indexed = list(enumerate(speakers))
    groups = [indexed[i : i + SPEAKERS_PER_PROCESS] for i in range(0, len(indexed), SPEAKERS_PER_PROCESS)]
    # maxtasksperchild=1: a fresh process per group, see synthesize_speakers.
    with context.Pool(num_workers, maxtasksperchild=1) as pool:
        work = partial(synthesize_speakers, options=options, root=root)
        utterance_rows = [row for rows in pool.imap(work, groups) for row in rows]
    speaker_rows = [{column: getattr(speaker, column) for column in SPEAKER_COLUMNS} for speaker in speakers]
    write_csv(root / "sources" / "speakers.csv", speaker_rows, overwrite=True)
    write_csv(root / "sources" / "utterances.csv", utterance_rows, overwrite=True)
    return utterance_rows


def _synthesize_mixtures(
    context, num_workers: int, options: CorpusOptions, root: Path, utterance_rows: list[dict]
) -> dict[str, list[dict]]:
    """Write the LibriMix part (wav folders and metadata CSVs); returns each split's results."""
    plans: list[MixturePlan] = []
    for split in SPLITS:
        utterances: dict[str, list[Path]] = {}
        for row in utterance_rows:
            if row["split"] == split:
                utterances.setdefault(row["speaker_id"], []).append(Path(row["path"]))
        plans.extend(plan_mixtures(split, utterances, options))
        split_dir = root / options.wav_dir / SPLIT_FOLDERS[split]
        for track in [f"s{i + 1}" for i in range(options.num_spks)] + ["noise", *MIX_TYPES]:
            (split_dir / track).mkdir(parents=True, exist_ok=True)
    with context.Pool(num_workers) as pool:
        work = partial(render_mixture, options=options, root=root)
        results = pool.map(work, plans, chunksize=16)

    metadata_dir = root / options.wav_dir / "metadata"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    results_by_split = {
        split: [result for plan, result in zip(plans, results) if plan.split == split] for split in SPLITS
    }
    for split, split_results in results_by_split.items():
        for mix_type in MIX_TYPES:
            write_csv(
                metadata_dir / f"mixture_{SPLIT_FOLDERS[split]}_{mix_type}.csv",
                [metadata_row(result, mix_type, options.num_spks) for result in split_results],
                overwrite=True,
            )
    shortcut = root / "metadata"
    try:
        shortcut.symlink_to(metadata_dir.relative_to(root), target_is_directory=True)
    except OSError:  # no symlinks (some Windows setups): a copy will do
        shutil.copytree(metadata_dir, shortcut)
    return results_by_split


def synthesize_corpus(
    output_dir: str | Path,
    num_spks: int = 2,
    sample_rate: int = 8000,
    mode: str = "min",
    num_train: int = SIZE_PRESETS["default"]["num_train"],
    num_dev: int = SIZE_PRESETS["default"]["num_dev"],
    num_test: int = SIZE_PRESETS["default"]["num_test"],
    num_train_speakers: int = SIZE_PRESETS["default"]["num_train_speakers"],
    num_dev_speakers: int = SIZE_PRESETS["default"]["num_dev_speakers"],
    num_test_speakers: int = SIZE_PRESETS["default"]["num_test_speakers"],
    utts_per_speaker: int = SIZE_PRESETS["default"]["utts_per_speaker"],
    seed: int = 0,
    num_workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Generate (or reuse) the synthetic LibriMix-style corpus; returns its root folder.

    Arguments
    ---------
    output_dir : the corpus goes to ``<output_dir>/MiniLibri<num_spks>Mix``.
    num_spks : speakers per mixture (2 or 3 like LibriMix; more also works).
    sample_rate : of every file, a multiple of 1000 Hz (folder ``wav8k`` for 8000).
    mode : "min" cuts each mixture to its shortest source, "max" zero-pads to the longest.
    num_train, num_dev, num_test : number of mixtures per split.
    num_train_speakers, num_dev_speakers, num_test_speakers : disjoint speakers per split.
    utts_per_speaker : single-speaker utterances per speaker in ``sources/``.
    seed : everything is a function of the options above: same seed, same bytes.
    num_workers : worker processes (default: the usable CPUs, at most 8); no effect on output.
    overwrite : replace an existing corpus made with other options instead of failing.
    """
    options = CorpusOptions(
        num_spks=num_spks,
        sample_rate=sample_rate,
        mode=mode,
        num_train=num_train,
        num_dev=num_dev,
        num_test=num_test,
        num_train_speakers=num_train_speakers,
        num_dev_speakers=num_dev_speakers,
        num_test_speakers=num_test_speakers,
        utts_per_speaker=utts_per_speaker,
        seed=seed,
    )
    num_workers = _default_num_workers() if num_workers is None else num_workers
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    root = corpus_root(output_dir, num_spks).absolute()  # CSVs hold absolute paths, like LibriMix
    root.parent.mkdir(parents=True, exist_ok=True)
    # Beside the root, which an interrupted or overwritten corpus is removed with.
    try:
        lock = acquire(root.parent / f".{root.name}.lock")
    except LockHeld as holder:
        raise CorpusInUseError(
            f"{root} is being generated by {holder}: wait for it to end, or use another output_dir"
        ) from None
    try:
        return _generate(root, options, num_workers, overwrite)
    finally:
        release(lock)


def _generate(root: Path, options: CorpusOptions, num_workers: int, overwrite: bool) -> Path:
    """`synthesize_corpus` once the root is this process's: reuse, replace or write the corpus."""
    identity = manifest_identity(options, root)
    if prepare_root(root, identity, overwrite):
        logger.info("%s is complete for these options: nothing to do", root)
        return root

    start = time.perf_counter()
    context = _process_context()
    utterance_rows = _synthesize_pool(context, num_workers, options, root)
    logger.info("Synthesised %d utterances in %.1f s", len(utterance_rows), time.perf_counter() - start)
    results = _synthesize_mixtures(context, num_workers, options, root, utterance_rows)

    seconds = time.perf_counter() - start
    summary = dict(
        speakers={split: options.num_speakers(split) for split in SPLITS},
        utterances=len(utterance_rows),
        source_hours=round(sum(row["num_samples"] for row in utterance_rows) / options.sample_rate / 3600, 3),
        mixtures={split: len(results[split]) for split in SPLITS},
        mixture_hours={
            split: round(sum(result["length"] for result in results[split]) / options.sample_rate / 3600, 3)
            for split in SPLITS
        },
        megabytes=round(disk_megabytes(root), 1),
        seconds=round(seconds, 1),
        num_workers=num_workers,
    )
    write_manifest(root, dict(identity, complete=True, summary=summary))
    logger.info("Wrote %s in %.1f s", root, seconds)
    return root


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: ``python -m demo.corpus.synth_corpus OUTPUT_DIR [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m demo.corpus.synth_corpus",
        description="Generate an offline synthetic speech-separation corpus in the LibriMix "
        "layout (eSpeak NG speakers, synthetic noise).",
    )
    parser.add_argument("output_dir", type=Path, help="the corpus goes to OUTPUT_DIR/MiniLibri<n>Mix")
    parser.add_argument(
        "--size",
        choices=sorted(SIZE_PRESETS),
        default="default",
        help="preset sizes; the --num-* options below override single values",
    )
    parser.add_argument("--num-spks", type=int, default=2, help="speakers per mixture")
    parser.add_argument("--sample-rate", type=int, default=8000, help="Hz, a multiple of 1000")
    parser.add_argument("--mode", choices=("min", "max"), default="min")
    for key in SIZE_PRESETS["default"]:
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=int,
            default=None,
            help=f"(default: {SIZE_PRESETS['default'][key]}, tiny: {SIZE_PRESETS['tiny'][key]})",
        )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=None, help="default: usable CPUs, at most 8")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing corpus made with other options (refused while it holds other files)",
    )
    # Every option but OUTPUT_DIR and --size is a keyword of synthesize_corpus.
    keywords = vars(parser.parse_args(argv))
    output_dir, preset = keywords.pop("output_dir"), SIZE_PRESETS[keywords.pop("size")]
    keywords.update({key: value for key, value in preset.items() if keywords[key] is None})
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.perf_counter()
    try:
        root = synthesize_corpus(output_dir, **keywords)
    except OutputError as error:  # a file that could not be written, in this process or a worker
        parser.exit(1, f"error: {error}\n")
    except (ValueError, FileExistsError) as error:  # bad options or an occupied folder
        parser.exit(2, f"error: {error}\n")
    except OSError as error:  # a folder that cannot be made or removed (a failed write is an OutputError)
        parser.exit(1, f"error: {error}\n")
    options = CorpusOptions(**(read_manifest(root) or {})["options"])
    summary = (read_manifest(root) or {}).get("summary", {})
    print(f"Corpus:   {root}")
    print(f"Mixtures: {root / options.wav_dir}/{{{','.join(SPLIT_FOLDERS.values())}}}/")
    print(f"Metadata: {root / options.wav_dir / 'metadata'}")
    print(f"Sources:  {root / 'sources'}/{{{','.join(SPLITS)}}}/ (+ speakers.csv, utterances.csv)")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    print(f"Done in {time.perf_counter() - start:.1f} s")
    return root


if __name__ == "__main__":
    # Run through the importable module, so that workers pickle functions by their real name.
    from demo.corpus.synth_corpus import main as _main

    _main()
