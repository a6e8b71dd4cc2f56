"""A separation corpus from a folder of single-speaker recordings: talkers split by speaker, fixed held-out mixtures.

`hparams/recordings.yaml` trains from any folder of recordings of one talker each (speaker folders, or a speaker
regex on the file names) by dynamic mixing. This module turns that folder into what the recipe reads, once:

    <corpus_folder>/speakers.csv                  every talker: its split, files and seconds (`left out`: too short)
    <corpus_folder>/train_sources/<speaker>/...   links to the training talkers' files: the dynamic-mixing pool
    <corpus_folder>/{valid,test}/{mixture,source1,...}/  fixed mixtures of the held-out talkers (a custom tree)
    <corpus_folder>/corpus.json                   what it was made from and what it holds; written last

Talkers, never utterances, are split: each talker's place in the order of sha1(seed, name) decides, so the split
depends on the names alone (not on the file system's order), and the held-out talkers are never trained on. The
valid and test talkers may instead come from folders of their own, which must not overlap the others. The folder
is built under a hidden name and renamed into place whole, so a run killed while making it leaves nothing that
looks finished; a later run reuses it as it is (scores stay comparable between runs) and refuses one made from
other recordings or options, or one that lost files. A run's checkpoints are tied to the corpus they trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path, PurePosixPath

from speechsep.data.audio import AUDIO_EXTENSIONS
from speechsep.data.audio_checks import AudioCheckError, SilentAudioError, check_samples, read_header
from speechsep.data.recorded_mixtures import write_mixtures
from speechsep.data.source_pool import PoolError, scan_audio_files
from speechsep.errors import RecipeError
from speechsep.locking import LockHeld, folder_locked
from speechsep.output_files import csv_content, text_content, write_files, write_text

logger = logging.getLogger(__name__)

RECORD_FILE = "corpus.json"
SPEAKERS_FILE = "speakers.csv"
TRAIN_SOURCES = "train_sources"
RUN_RECORD = "speaker_corpus.json"  # in a run's save folder: the corpus its checkpoints trained on
HELD_OUT = ("valid", "test")
FOLDER_KEYS = {"source": "source_folder", "valid": "valid_source_folder", "test": "test_source_folder"}


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
    talker_counts: list[int] | None = None  # the valid/test mixtures hold each of these counts in turn (None: num_spks)


def prepare_for_run(hparams: dict, test_only: bool) -> None:
    """The corpus of a run of hparams/recordings.yaml: made or checked, and tied to the run's checkpoints; a test of
    a run whose corpus exists uses it as it is (its recordings may have moved on since)."""
    corpus_folder = Path(hparams["corpus_folder"])
    keys = {field.name: field.name for field in fields(CorpusOptions)} | {"seed": "corpus_seed"}
    options = CorpusOptions(**{name: hparams[key] for name, key in keys.items() if key != "talker_counts"})
    if hparams.get("talker_counts") is not None:  # configs of a fixed number of talkers have none
        options = replace(options, talker_counts=list(hparams["talker_counts"]))
    if test_only and (corpus_folder / RECORD_FILE).is_file():
        _check_same_corpus(corpus_folder, {"options": asdict(options)})  # the options; the recordings may have moved
        logger.info(f"Testing on the test mixtures of {corpus_folder} as they are")
    else:
        given = {name: hparams[f"{name}_source_folder"] for name in HELD_OUT}
        prepare_speaker_corpus(hparams["source_folder"], corpus_folder, options, given["valid"], given["test"])
    if not hparams.get("pretrained_separator"):  # the run's own checkpoints: trained on this corpus
        _tie_to_run(corpus_folder, Path(hparams["save_folder"]), hparams["output_folder"])


def check_folders(folders: dict[str, str | Path | None], corpus_folder: str | Path, output_folder=None) -> None:
    """The recordings folders (`source_folder`, `valid_source_folder`, ...: path or None) hold none of one another,
    and none holds the corpus or the run's outputs (which would be read as recordings the next time)."""
    resolved = {key: Path(folder).resolve() for key, folder in folders.items() if folder}
    written = {"corpus_folder": corpus_folder, "output_folder": output_folder}
    for key, folder in resolved.items():
        for other, path in [*resolved.items(), *((k, Path(p).resolve()) for k, p in written.items() if p)]:
            if other != key and (path == folder or folder in path.parents):
                raise SpeakerCorpusError(
                    f"{other} {path} is inside {key} {folder}: held-out talkers would be trained on, or written "
                    "files read as recordings; give folders that do not hold one another"
                )


# ---------------------------------------------------------------------------------------------- finding talkers
def find_speakers(folder: Path, key: str, scanned: list, options: CorpusOptions) -> tuple[dict, dict[str, float]]:
    """The usable audio files of `folder` (`scanned` by `_scan`; hidden ones skipped) by talker (the
    folder under `folder`, or the regex's first group on the file name), and each talker's seconds. Silent files
    are left out with one warning, as are talkers with less than `min_speaker_seconds` (their seconds are kept).
    A file that cannot be read, NaN samples, a folder without audio or a name without a talker: one error line."""
    pattern = re.compile(options.speaker_regex) if options.speaker_regex else None
    files, seconds = defaultdict(list), defaultdict(float)
    silent, upsampled = [], []
    for scanned_file in scanned:
        if _is_hidden(scanned_file.rel_path):
            continue
        parts = PurePosixPath(scanned_file.rel_path).parts
        path = Path(folder, *parts)
        speaker = _speaker_of(path, parts, pattern, options.speaker_regex)
        try:
            header = read_header(path)
            check_samples(path, is_reference=True, first_channel_only=True)  # the channel mixtures are made of
        except SilentAudioError:
            silent.append(path)
            continue
        except AudioCheckError as err:
            raise SpeakerCorpusError(f"{err} (in {key}): remove or replace it") from None
        upsampled += [path] if header.sample_rate < options.sample_rate else []
        files[speaker].append(path)
        seconds[speaker] += header.frames / header.sample_rate
    if silent:
        logger.warning(f"Leaving out {len(silent)} silent file(s) of {folder} (first channel all 0), e.g. {silent[0]}")
    if upsampled:
        logger.warning(
            f"{len(upsampled)} file(s) of {folder} are at a lower rate than sample_rate={options.sample_rate}, e.g. "
            f"{upsampled[0]}: they are upsampled, and hold nothing above half their own rate"
        )
    if not files:
        raise SpeakerCorpusError(f"{key} {folder} holds no usable audio files ({', '.join(AUDIO_EXTENSIONS)})")
    short = sorted(speaker for speaker in files if seconds[speaker] < options.min_speaker_seconds)
    if short:
        logger.warning(
            f"Leaving out {len(short)} talker(s) of {folder} with less than {options.min_speaker_seconds:g} s of audio "
            f"(min_speaker_seconds): {', '.join(short[:10])}{' ...' if len(short) > 10 else ''}"
        )
    return {speaker: files[speaker] for speaker in sorted(files) if speaker not in short}, dict(seconds)


def _scan(folder: str | Path, key: str) -> list:
    """The audio files of a recordings folder (`source_pool.scan_audio_files`); errors name the folder's key."""
    if not Path(folder).is_dir():
        raise SpeakerCorpusError(f"{key} {folder} does not exist or is not a folder")
    try:
        return scan_audio_files(Path(folder), role=f"in {key}")
    except PoolError as err:
        raise SpeakerCorpusError(str(err)) from None


def _speaker_of(path: Path, parts: tuple[str, ...], pattern: re.Pattern | None, speaker_regex: str | None) -> str:
    if pattern is None:  # the top folder (LibriSpeech: <speaker>/<chapter>/<file>)
        if len(parts) == 1:
            raise SpeakerCorpusError(
                f"{path} is not in a speaker folder: put each talker's files in a folder of its own "
                "(<speaker>/<file>), or give speaker_regex, whose first group is the talker in the file name"
            )
        return parts[0]
    match = pattern.search(path.stem)
    if match is None or not match.groups() or not match.group(1):
        raise SpeakerCorpusError(
            f"{path.name}: speaker_regex {speaker_regex!r} does not match it, or its first group (the talker) "
            "matches nothing"
        )
    return match.group(1)


def split_speakers(speakers: list[str], options: CorpusOptions, splits: tuple[str, ...] = HELD_OUT) -> dict:
    """`splits` (some of valid, test) each get their fraction of `speakers` (at least num_spks), in the order of
    sha1(seed, name); train gets the rest. Deterministic, disjoint, independent of the order given; a talker added
    to the folder can move another across the splits' borders, so each corpus records the folder it was made from."""
    order = sorted(speakers, key=lambda name: hashlib.sha1(f"{options.seed}/{name}".encode(errors="replace")).digest())
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
    from these recordings with these options and is whole; returns it. Two processes at once: one makes it, the
    other waits for it."""
    corpus_folder = Path(corpus_folder)
    folders = {"source": source_folder, "valid": valid_source_folder, "test": test_source_folder}
    check_folders({FOLDER_KEYS[name]: path for name, path in folders.items()}, corpus_folder)
    try:
        corpus_folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpeakerCorpusError(f"corpus_folder {corpus_folder} cannot be made: {err.strerror or err}") from None
    with _locked(corpus_folder.parent, corpus_folder):
        scans = {name: _scan(folder, FOLDER_KEYS[name]) for name, folder in folders.items() if folder}
        record = _corpus_record(folders, scans, options)
        if corpus_folder.is_dir() and not any(corpus_folder.iterdir()):
            corpus_folder.rmdir()  # an empty folder made beforehand
        if corpus_folder.exists():
            _check_same_corpus(corpus_folder, record)
            return corpus_folder
        staging = corpus_folder.parent / f".{corpus_folder.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while making it (the lock is ours)
        try:
            _write_corpus(staging, folders, scans, options, record)
            os.rename(staging, corpus_folder)
        except OSError as err:
            raise SpeakerCorpusError(f"corpus_folder {corpus_folder} cannot be made: {err.strerror or err}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return corpus_folder


def _locked(folder: Path, corpus_folder: Path):
    """The lock on the corpus folder's parent, saying so when another process holds it (it is making a corpus)."""
    try:
        with folder_locked(folder, wait=False):
            pass
    except LockHeld:
        logger.info(f"Waiting for another process making a corpus in {folder} (for {corpus_folder.name})")
    return folder_locked(folder)


def _write_corpus(staging: Path, folders: dict, scans: dict, options: CorpusOptions, record: dict) -> None:
    keys = FOLDER_KEYS
    found = {name: find_speakers(Path(folders[name]), keys[name], scans[name], options) for name in scans}
    names = {name: set(talkers) for name, (talkers, _) in found.items()}
    for first, second in (("source", "valid"), ("source", "test"), ("valid", "test")):
        shared = sorted(names.get(first, set()) & names.get(second, set()))
        if shared:
            raise SpeakerCorpusError(
                f"talker(s) {', '.join(shared[:5])} are in both {keys[first]} and {keys[second]}: "
                "the talkers of train, valid and test must differ"
            )
    speakers = found["source"][0]
    split = split_speakers(sorted(speakers), options, tuple(name for name in HELD_OUT if name not in found))
    recordings = {name: {speaker: speakers[speaker] for speaker in split[name]} for name in split}
    recordings.update({name: found[name][0] for name in HELD_OUT if name in found})
    for name, talkers in recordings.items():
        origin = name if name in found else "source"  # the folder that gave the split its talkers
        if len(talkers) < options.num_spks:
            divided = f" ({options.num_spks} talkers for each split it is divided into)" if origin == "source" else ""
            raise SpeakerCorpusError(
                f"{keys[origin]} {folders[origin]} gives the {name} split {len(talkers)} talker(s) with at least "
                f"{options.min_speaker_seconds:g} s of usable audio, but mixtures of num_spks={options.num_spks} "
                f"need {options.num_spks}{divided}"
            )
    staging.mkdir(parents=True)
    links = 0
    for speaker, paths in recordings["train"].items():
        folder = staging / TRAIN_SOURCES / speaker
        folder.mkdir(parents=True)
        for index, path in enumerate(paths):
            (folder / f"{index:05d}_{path.stem[:80]}{path.suffix}").symlink_to(path.resolve())
        links += len(paths)
    for name in HELD_OUT:
        count = getattr(options, f"{name}_mixtures")
        seed = options.seed * 2 + HELD_OUT.index(name)  # valid and test draw differently
        manifest = write_mixtures(
            recordings[name], staging, name, count, options.sample_rate, options.num_spks, seed, options.talker_counts
        )
        manifest.unlink()  # it names the staging folder: the recipe's manifests are made from the tree
    seconds = {speaker: value for _, talker_seconds in found.values() for speaker, value in talker_seconds.items()}
    rows = [
        {"speaker": speaker, "split": name, "files": len(paths), "seconds": round(seconds[speaker], 2)}
        for name, talkers in recordings.items()
        for speaker, paths in sorted(talkers.items())
    ]
    used = {row["speaker"] for row in rows}
    left_out = sorted(set(seconds) - used)
    rows += [{"speaker": s, "split": "left out", "files": "", "seconds": round(seconds[s], 2)} for s in left_out]
    contents = {name: len(talkers) for name, talkers in recordings.items()}
    logger.info(f"Talkers of {folders['source']}, split by speaker: {contents}")
    contents = {"talkers": contents, "train_links": links}
    write_files(
        {
            staging / SPEAKERS_FILE: csv_content(rows),
            staging / RECORD_FILE: text_content(json.dumps({**record, "contents": contents}, indent=1)),
        }
    )


def _corpus_record(folders: dict, scans: dict, options: CorpusOptions) -> dict:
    """What the corpus is made from: the options, the folders and their audio files (names and sizes: a copy that
    changes the files' times, or a touch, is the same recordings)."""
    record = {"options": asdict(options)}
    for name, folder in folders.items():
        if folder is None:
            record[FOLDER_KEYS[name]] = None
            continue
        used = [file for file in scans[name] if not _is_hidden(file.rel_path)]
        listing = "".join(f"{file.rel_path}\0{file.size}\n" for file in used).encode(errors="replace")
        files = {"audio_files": len(used), "listing_sha1": hashlib.sha1(listing).hexdigest()}
        record[FOLDER_KEYS[name]] = {"path": str(Path(folder).resolve()), **files}
    return record


def _is_hidden(rel_path: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(rel_path).parts)


def _check_same_corpus(corpus_folder: Path, record: dict) -> None:
    """Refuse a corpus folder made from other recordings or options, one that lost files, or no corpus at all."""
    try:
        found = json.loads((corpus_folder / RECORD_FILE).read_text())
        contents = found.pop("contents")
        found_options = dict(found["options"])
        train_links = int(contents["train_links"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        unreadable = (corpus_folder / RECORD_FILE).is_file()
        raise SpeakerCorpusError(
            f"corpus_folder {corpus_folder} exists but "
            + (
                f"its {RECORD_FILE} is not a record this version reads (damaged, or written by an older one)"
                if unreadable
                else f"holds no speaker corpus ({RECORD_FILE})"
            )
            + ": choose another corpus_folder"
        ) from None
    differences = [
        f"options.{key}: {found_options.get(key)} -> {value}"
        for key, value in record["options"].items()
        if found_options.get(key) != value
    ]
    for key in record.keys() - {"options"}:
        before, now = found.get(key) or {}, record[key] or {}
        if before.get("path") != now.get("path"):
            differences.append(f"{key}: {before.get('path')} -> {now.get('path')}")
        elif before.get("audio_files") != now.get("audio_files"):
            differences.append(f"{key}: {before.get('audio_files')} -> {now.get('audio_files')} audio files")
        elif before != now:
            differences.append(f"{key}: names or sizes of its files changed")
    if differences:
        raise SpeakerCorpusError(
            f"corpus_folder {corpus_folder} was made from other recordings or options ({'; '.join(differences)}): "
            "its valid/test mixtures are kept so that scores stay comparable; give another corpus_folder to make a "
            "new corpus, or delete that one"
        )
    _check_whole(corpus_folder, found_options, train_links)


def _check_whole(corpus_folder: Path, options: dict, train_links: int) -> None:
    """Every file the corpus was made with is still there (links to the training talkers, held-out .wav files)."""
    expected = {Path(TRAIN_SOURCES): train_links}
    for name in HELD_OUT:
        signals = ["mixture", *(f"source{k}" for k in range(1, options["num_spks"] + 1))]
        expected.update({Path(name, signal): options[f"{name}_mixtures"] for signal in signals})
    for folder, count in expected.items():
        path = corpus_folder / folder
        pattern = "*" if folder.name == TRAIN_SOURCES else "*.wav"
        found = (
            sum(1 for p in path.rglob(pattern) if not p.is_dir() and not p.name.startswith(".")) if path.is_dir() else 0
        )
        if found != count:
            raise SpeakerCorpusError(
                f"corpus_folder {corpus_folder} does not hold what it was made with ({folder} holds {found} files, "
                f"made with {count}): delete it to make it again"
            )


def _tie_to_run(corpus_folder: Path, save_folder: Path, output_folder: str) -> None:
    """Refuse to go on with checkpoints trained on another corpus; note this one for the next run."""
    record = (corpus_folder / RECORD_FILE).read_text()
    run_record = save_folder / RUN_RECORD
    if run_record.is_file() and run_record.read_text() != record and any(save_folder.glob("CKPT+*")):
        raise SpeakerCorpusError(
            f"the checkpoints in {output_folder} were trained on another corpus than {corpus_folder} (another split "
            f"or other mixtures; {run_record} describes theirs): restore that corpus, or train in another output_folder"
        )
    save_folder.mkdir(parents=True, exist_ok=True)
    write_text(run_record, record, overwrite=True)
