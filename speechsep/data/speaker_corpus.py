"""A separation corpus from a folder of single-speaker recordings: talkers split by speaker, fixed held-out mixtures.

`hparams/recordings.yaml` trains from any folder of recordings of one talker each (speaker folders, or a speaker
regex on the file names) by dynamic mixing. This module turns that folder into what the recipe reads, once:

    <corpus_folder>/speakers.csv                  every talker, its split, its files and seconds
    <corpus_folder>/train_sources/<speaker>/...   links to the training talkers' files: the dynamic-mixing pool
    <corpus_folder>/{valid,test}/{mixture,source1,...}/  fixed mixtures of the held-out talkers (a custom tree)
    <corpus_folder>/corpus.json                   what it was made from; written last

Talkers, never utterances, are split: each talker's place in the order of sha1(seed, name) decides, so the split
depends on the names alone (not on the file system's order), and the held-out talkers are never trained on. The
valid and test talkers may instead come from folders of their own. The folder is built under a hidden name and
renamed into place whole, so a run killed while making it leaves nothing that looks finished; a later run reuses
it as it is (scores stay comparable between runs) and refuses one made from other recordings or options.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from speechsep.data.audio import is_audio_name
from speechsep.data.audio_checks import AudioCheckError, read_header
from speechsep.data.recorded_mixtures import write_mixtures
from speechsep.errors import RecipeError
from speechsep.locking import folder_locked
from speechsep.output_files import csv_content, text_content, write_files

logger = logging.getLogger(__name__)

RECORD_FILE = "corpus.json"
SPEAKERS_FILE = "speakers.csv"
TRAIN_SOURCES = "train_sources"
HELD_OUT = ("valid", "test")


class SpeakerCorpusError(RecipeError):
    """A recordings folder that cannot give a separation corpus, or a corpus folder that is not this one."""


@dataclass(frozen=True)
class CorpusOptions:
    """Everything the corpus's content depends on, besides the recordings themselves."""

    num_spks: int = 2
    sample_rate: int = 8000
    speaker_regex: str | None = None
    valid_speakers: float = 0.15  # fraction of the talkers (at least num_spks of them)
    test_speakers: float = 0.2
    valid_mixtures: int = 100
    test_mixtures: int = 300
    min_speaker_seconds: float = 3.0
    seed: int = 0


def corpus_arguments(hparams: dict) -> dict:
    """`prepare_speaker_corpus`'s keyword arguments from a config's values (hparams/recordings.yaml)."""
    options = CorpusOptions(
        num_spks=hparams["num_spks"],
        sample_rate=hparams["sample_rate"],
        speaker_regex=hparams["speaker_regex"],
        valid_speakers=hparams["valid_speakers"],
        test_speakers=hparams["test_speakers"],
        valid_mixtures=hparams["valid_mixtures"],
        test_mixtures=hparams["test_mixtures"],
        min_speaker_seconds=hparams["min_speaker_seconds"],
        seed=hparams["corpus_seed"],
    )
    return dict(
        source_folder=hparams["source_folder"],
        corpus_folder=hparams["corpus_folder"],
        options=options,
        valid_source_folder=hparams["valid_source_folder"],
        test_source_folder=hparams["test_source_folder"],
    )


# ---------------------------------------------------------------------------------------------- finding talkers
def find_speakers(folder: Path, speaker_regex: str | None, min_seconds: float) -> dict[str, list[Path]]:
    """Every audio file under `folder` grouped by talker (the file's folder, or the regex's first group on its
    name); talkers with less than `min_seconds` of audio are left out with one warning. Unreadable files, a
    folder without audio or names the regex does not match are one error line."""
    if not folder.is_dir():
        raise SpeakerCorpusError(f"{folder} does not exist or is not a folder")
    pattern = re.compile(speaker_regex) if speaker_regex else None
    files: dict[str, list[Path]] = defaultdict(list)
    seconds: dict[str, float] = defaultdict(float)
    for path in sorted(p for p in folder.rglob("*") if is_audio_name(p) and not p.name.startswith(".")):
        if pattern is None:  # the top folder under `folder` (LibriSpeech: <speaker>/<chapter>/<file>)
            parts = path.relative_to(folder).parts
            speaker = parts[0] if len(parts) > 1 else None
            if speaker is None:
                raise SpeakerCorpusError(
                    f"{path} is not in a speaker folder: put each talker's files in a folder of its own "
                    "(<speaker>/<file>), or give speaker_regex, whose first group is the talker in the file name"
                )
        else:
            match = pattern.search(path.stem)
            if match is None or not match.groups():
                raise SpeakerCorpusError(
                    f"{path.name} does not match speaker_regex {speaker_regex!r}, whose first group must be the talker"
                )
            speaker = match.group(1)
        try:
            header = read_header(path)
        except AudioCheckError as err:
            raise SpeakerCorpusError(f"{err} (in {folder}): remove or replace it") from None
        files[speaker].append(path)
        seconds[speaker] += header.frames / header.sample_rate
    if not files:
        raise SpeakerCorpusError(f"{folder} holds no audio files (.wav, .flac, ...)")
    short = sorted(speaker for speaker in files if seconds[speaker] < min_seconds)
    if short:
        logger.warning(
            f"Leaving out {len(short)} talker(s) of {folder} with less than {min_seconds:g} s of audio "
            f"(min_speaker_seconds): {', '.join(short[:10])}{' ...' if len(short) > 10 else ''}"
        )
    return {speaker: files[speaker] for speaker in sorted(files) if speaker not in short}


def split_speakers(speakers: list[str], options: CorpusOptions, splits: tuple[str, ...] = HELD_OUT) -> dict:
    """`splits` (some of valid, test) each get their fraction of `speakers` (at least num_spks), in the order of
    sha1(seed, name); train gets the rest. Deterministic, disjoint, independent of the order given."""
    order = sorted(speakers, key=lambda name: hashlib.sha1(f"{options.seed}/{name}".encode()).hexdigest())
    split = {}
    for name in splits:
        fraction = getattr(options, f"{name}_speakers")
        count = max(options.num_spks, round(fraction * len(speakers)))
        split[name], order = order[:count], order[count:]
    split["train"] = order
    return split


# ---------------------------------------------------------------------------------------------- the corpus
def prepare_speaker_corpus(
    source_folder: str | Path,
    corpus_folder: str | Path,
    options: CorpusOptions = CorpusOptions(),
    valid_source_folder: str | Path | None = None,
    test_source_folder: str | Path | None = None,
) -> Path:
    """Make `corpus_folder` from the recordings (see the module docstring), or check that the one there was made
    from these recordings with these options; returns it. Two processes at once: one makes it, the other waits."""
    corpus_folder = Path(corpus_folder)
    given = {"valid": valid_source_folder, "test": test_source_folder}
    record = _corpus_record(Path(source_folder), options, given)
    corpus_folder.parent.mkdir(parents=True, exist_ok=True)
    with folder_locked(corpus_folder.parent):
        if corpus_folder.exists():
            _check_same_corpus(corpus_folder, record)
            return corpus_folder
        staging = corpus_folder.parent / f".{corpus_folder.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while making it (the lock is ours)
        try:
            _write_corpus(staging, Path(source_folder), options, given, record)
            os.rename(staging, corpus_folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return corpus_folder


def _write_corpus(staging: Path, source_folder: Path, options: CorpusOptions, given: dict, record: dict) -> None:
    speakers = find_speakers(source_folder, options.speaker_regex, options.min_speaker_seconds)
    held_out = {
        name: find_speakers(Path(folder), options.speaker_regex, options.min_speaker_seconds)
        for name, folder in given.items()
        if folder
    }
    for name, talkers in held_out.items():
        shared = sorted(set(talkers) & set(speakers))
        if shared:
            raise SpeakerCorpusError(
                f"talker(s) {', '.join(shared[:5])} are in both source_folder and {name}_source_folder: "
                "held-out talkers must not be trained on"
            )
    split = split_speakers(sorted(speakers), options, tuple(name for name in HELD_OUT if name not in held_out))
    recordings = {name: {speaker: speakers[speaker] for speaker in split[name]} for name in split}
    recordings.update(held_out)
    for name, talkers in recordings.items():
        if len(talkers) < options.num_spks:
            raise SpeakerCorpusError(
                f"{source_folder} gives the {name} split {len(talkers)} talker(s) with at least "
                f"{options.min_speaker_seconds:g} s of audio, but mixtures of num_spks={options.num_spks} need "
                f"{options.num_spks} ({len(speakers)} such talker(s) in all; a train/valid/test split needs at least "
                f"{3 * options.num_spks}, or give valid_source_folder and test_source_folder)"
            )
    staging.mkdir(parents=True)
    for speaker, paths in recordings["train"].items():
        folder = staging / TRAIN_SOURCES / speaker
        folder.mkdir(parents=True)
        for path in paths:
            link = folder / "__".join(path.relative_to(source_folder).parts)
            link.symlink_to(path.resolve())
    for name in HELD_OUT:
        count = getattr(options, f"{name}_mixtures")
        seed = options.seed * 2 + HELD_OUT.index(name)  # valid and test draw differently
        manifest = write_mixtures(recordings[name], staging, name, count, options.sample_rate, options.num_spks, seed)
        manifest.unlink()  # it names the staging folder: the recipe's manifests are made from the tree
    rows = [
        {"speaker": speaker, "split": name, "files": len(paths)}
        for name, talkers in recordings.items()
        for speaker, paths in sorted(talkers.items())
    ]
    counts = {name: len(talkers) for name, talkers in recordings.items()}
    logger.info(f"Talkers of {source_folder}, split by speaker: {counts}")
    write_files(
        {
            staging / SPEAKERS_FILE: csv_content(rows),
            staging / RECORD_FILE: text_content(json.dumps({**record, "talkers": counts}, indent=1)),
        }
    )


def _corpus_record(source_folder: Path, options: CorpusOptions, given: dict) -> dict:
    """What the corpus is made from: the folders, their files (names, sizes, times) and the options."""
    folders = {"source_folder": source_folder, **{f"{name}_source_folder": path for name, path in given.items()}}
    record = {"options": asdict(options)}
    for key, folder in folders.items():
        if folder is None:
            record[key] = None
            continue
        folder = Path(folder)
        if not folder.is_dir():
            raise SpeakerCorpusError(f"{key} {folder} does not exist or is not a folder")
        listing = hashlib.sha1()
        count = 0
        for path in sorted(p for p in folder.rglob("*") if is_audio_name(p)):
            status = path.stat()
            listing.update(f"{path.relative_to(folder)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
            count += 1
        record[key] = {"path": str(folder.resolve()), "audio_files": count, "listing_sha1": listing.hexdigest()}
    return record


def _check_same_corpus(corpus_folder: Path, record: dict) -> None:
    """Refuse a corpus folder made from other recordings or options (or that is no corpus at all)."""
    try:
        found = json.loads((corpus_folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        raise SpeakerCorpusError(
            f"corpus_folder {corpus_folder} exists but holds no speaker corpus ({RECORD_FILE}): "
            "choose another corpus_folder"
        ) from None
    found.pop("talkers", None)
    found_options = found.get("options") or {}
    differences = [f"options.{key}" for key in record["options"] if found_options.get(key) != record["options"][key]]
    differences += [key for key in record if key != "options" and found.get(key) != record[key]]
    if differences:
        raise SpeakerCorpusError(
            f"corpus_folder {corpus_folder} was made from other recordings or options ({', '.join(differences)} "
            "differ): its valid/test mixtures are kept so that scores stay comparable; give another corpus_folder "
            "to make a new corpus, or delete that one"
        )
