"""The pool of single-speaker utterances that dynamic mixing draws from: found, indexed and resampled once.

A folder in one of the `EXPECTED_LAYOUTS` (LibriSpeech, WSJ0, the embedded corpus, or one folder per speaker) is
scanned once; its index (paths, frame counts, speakers) and the files resampled to the training rate are cached,
keyed by the files' sizes and times, so a restart or another rank reuses them. Only paths, frame counts and
speaker ids are kept in memory.

What a pool's file must be (`speechsep.data.audio_checks`): a broken file (a dangling link, a FIFO or device, a
header libsndfile cannot read, NaN or inf samples, a name that is not UTF-8) is one error line naming it, since
it means a damaged copy of the corpus. A file that is sound but holds nothing to mix (0 samples, or a first
channel that is all 0) is left out, counted in one warning; a pool with nothing left is one error line. The
first channel is what is read, from sources and noise alike (WHAM!'s noise is stereo, and its first channel is
what WHAM! mixes), so a stereo file whose speech is on its second channel counts as silent.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf
import torch

from speechsep.data.audio import AUDIO_EXTENSIONS, is_audio_name
from speechsep.data.audio_checks import (
    AudioCheckError,
    SilentAudioError,
    check_samples,
    file_problem,
    read_blocks,
    read_header,
)
from speechsep.data.resample import resample
from speechsep.errors import RecipeError
from speechsep.output_files import write_csv, write_file

logger = logging.getLogger(__name__)


class PoolError(RecipeError):
    """A source or noise folder that cannot serve dynamic mixing; the message names the folder."""

SILENCE_RMS = 1e-4  # -80 dBFS: quieter signals keep their level instead of being amplified to a target
OTHER_AUDIO_EXTENSIONS = (".aif", ".aiff", ".mp3", ".m4a", ".aac", ".opus", ".wma", ".au", ".caf", ".w64", ".sph")
EXPECTED_LAYOUTS = (
    "a LibriSpeech split (<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac), "
    "WSJ0 si_tr_s (<spk>/<spk>xxxxx.wav) or speaker folders (<speaker>/<utterance>.wav)"
)


# --------------------------------------------------------------------------------------------------
# Indexing audio folders (with a cache of frame counts and of resampled copies)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class ScannedFile:
    rel_path: str  # POSIX path relative to the scanned folder
    size: int
    mtime_ns: int


def _folder_id(path: str | Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _walk_without_loops(folder: Path):
    """`os.walk(folder, followlinks=True)`, except that a link to a folder above it (a loop) is not followed,
    with one warning naming it: followed, it would be walked until the path is too long to open."""
    ancestors = {str(folder): {_folder_id(folder)}}  # the folders above each one to walk, and itself
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        above = ancestors.pop(dirpath, set())
        for name in list(dirnames):
            child = os.path.join(dirpath, name)
            try:
                child_id = _folder_id(child)
            except OSError:
                continue  # os.walk cannot list it either
            if child_id in above:
                logger.warning(f"Not following {child}: it leads back to {os.path.realpath(child)}, a folder above it")
                dirnames.remove(name)
            else:
                ancestors[child] = above | {child_id}
        yield dirpath, dirnames, filenames


def scan_audio_files(folder: Path, role: str = "in the pool") -> list[ScannedFile]:
    """Audio files under `folder` (links followed, but not round a loop), sorted so that every process agrees on
    the order. Files in other audio formats are left out with one warning; a file that cannot be read (a FIFO, a
    dangling link, a name that is not UTF-8) is one error line naming it and its `role`."""
    if not folder.is_dir():
        raise PoolError(f"Audio folder {folder} does not exist or is not a folder")
    scanned, other_formats = [], []
    for dirpath, _, filenames in _walk_without_loops(folder):
        for name in filenames:
            if not is_audio_name(name):
                other_formats += [Path(dirpath, name)] if Path(name).suffix.lower() in OTHER_AUDIO_EXTENSIONS else []
                continue
            path = Path(dirpath, name)
            problem = file_problem(path)  # before anything opens it: a FIFO would block the reader
            if problem is None and not _is_utf8(str(path)):
                problem = "its name is not UTF-8, which the index is written in"
            if problem:
                raise PoolError(f"{path} {role}: {problem}; remove or replace it")
            stat = path.stat()
            rel_path = path.relative_to(folder).as_posix()
            scanned.append(ScannedFile(rel_path, stat.st_size, stat.st_mtime_ns))
    if other_formats:
        logger.warning(
            f"Leaving out {len(other_formats)} file(s) of {folder} in formats other than {'/'.join(AUDIO_EXTENSIONS)}, "
            f"e.g. {other_formats[0]}: convert them to use them"
        )
    if not scanned:
        raise PoolError(f"No {'/'.join(AUDIO_EXTENSIONS)} files under {folder}")
    return sorted(scanned)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_mono(path: str, start: int = 0, frames: int = -1) -> np.ndarray:
    """Frames [start, start + frames) of the first channel, as float32 in [-1, 1]."""
    audio, _ = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio[:, 0])


def _resample_file(source: Path, target: Path, sample_rate: int) -> int:
    """Write `source`'s first channel resampled to `sample_rate` (or copied, for a stream whose header gives no
    length, which readers could not crop near its end) at `target`; returns its number of frames.

    The level is kept as it is: the file keeps its sample format unless the resampling filter's
    overshoot would clip it, in which case it is written as float.
    """
    header = read_header(source)
    audio = torch.from_numpy(np.concatenate([block[:, 0] for block in read_blocks(source)]))
    resampled = resample(audio, header.sample_rate, sample_rate).numpy()
    fits = np.abs(resampled).max(initial=0.0) < 1.0
    subtype = header.subtype if fits and sf.check_format("WAV", header.subtype) else "FLOAT"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_file(target, lambda path: sf.write(path, resampled, sample_rate, subtype=subtype, format="WAV"), overwrite=True)
    return len(resampled)


class _FolderCache:
    """Cache of one audio folder at one sample rate: an index CSV and resampled copies of the files."""

    COLUMNS = ("rel_path", "size", "mtime_ns", "source_rate", "num_frames", "silent", "copied")

    def __init__(self, cache_dir: str | Path, folder: Path, sample_rate: int):
        resolved = folder.resolve()
        digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
        self.root = Path(cache_dir) / f"{resolved.name}-{digest}"
        self.index_path = self.root / f"index_{sample_rate}Hz.csv"
        self.resampled_root = self.root / f"{sample_rate}Hz"

    def resampled_path(self, rel_path: str) -> Path:
        return (self.resampled_root / rel_path).with_suffix(".wav")

    def read_index(self) -> dict[str, dict[str, int]]:
        if not self.index_path.exists():
            return {}
        with open(self.index_path, newline="") as file:
            reader = csv.DictReader(file)
            if set(self.COLUMNS) - set(reader.fieldnames or []):  # written by an earlier version: index again
                return {}
            return {row["rel_path"]: {key: int(row[key]) for key in self.COLUMNS[1:]} for row in reader}

    def write_index(self, rows: dict[str, dict[str, int]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        table = [{"rel_path": rel_path, **row} for rel_path, row in rows.items()]
        write_csv(self.index_path, table, columns=self.COLUMNS, overwrite=True)


@dataclass
class AudioIndex:
    """The audio files of one folder at one sample rate: where to read them and how long they are.

    Files at another sample rate are read from resampled copies in the cache. Empty and silent files are left out.
    """

    folder: str
    rel_paths: list[str]  # relative to `folder`, as found there
    paths: list[str]  # what to read: the file itself, or its resampled copy
    num_frames: np.ndarray  # [num_files] int64, at the index's sample rate

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_folder(
        cls, folder: str | Path, sample_rate: int, cache_dir: str | Path | None = None
    ) -> AudioIndex:
        """Index every .wav/.flac file under `folder` (see `build`)."""
        folder = Path(folder)
        return cls.build(folder, scan_audio_files(folder), sample_rate, cache_dir)

    @classmethod
    def build(
        cls,
        folder: Path,
        scanned: Sequence[ScannedFile],
        sample_rate: int,
        cache_dir: str | Path | None,
    ) -> AudioIndex:
        """Read the frame counts of the scanned files, resampling those at another rate into the cache.

        With a `cache_dir`, the frame counts are kept in a CSV there and only files that are new or
        changed (size, modification time) since the last run are opened again.
        """
        cache = _FolderCache(cache_dir, folder, sample_rate) if cache_dir is not None else None
        cached_rows = cache.read_index() if cache is not None else {}
        rows = {file.rel_path: cached_rows.get(file.rel_path) for file in scanned}
        stale = [file for file in scanned if not _is_current(rows[file.rel_path], file, sample_rate, cache)]
        if stale:
            logger.info(f"Indexing {len(stale)} new or changed audio files of {folder}")
            for file in stale:
                rows[file.rel_path] = _index_row(folder, file, sample_rate, cache)
            num_resampled = sum(rows[file.rel_path]["copied"] for file in stale)
            if num_resampled:
                logger.info(
                    f"Resampled {num_resampled} files of {folder} to {sample_rate} Hz into "
                    f"{cache.resampled_root}; later runs read them from there"
                )
        if cache is not None and rows != cached_rows:
            cache.write_index(rows)

        rel_paths = _usable(folder, rows)
        paths = [
            str(folder / rel_path)
            if not rows[rel_path]["copied"]
            else str(cache.resampled_path(rel_path))
            for rel_path in rel_paths
        ]
        num_frames = np.array([rows[rel_path]["num_frames"] for rel_path in rel_paths], dtype=np.int64)
        return cls(str(folder), rel_paths, paths, num_frames)


def _usable(folder: Path, rows: dict[str, dict[str, int]]) -> list[str]:
    """The files with something to mix, after one warning for those left out; none is a PoolError."""
    empty = [rel_path for rel_path, row in rows.items() if row["num_frames"] == 0]
    silent = [rel_path for rel_path, row in rows.items() if row["num_frames"] > 0 and row["silent"]]
    left_out = [f"{len(names)} {what}, e.g. {names[0]}" for what, names in (("empty", empty), ("silent", silent)) if names]
    usable = [rel_path for rel_path, row in rows.items() if row["num_frames"] > 0 and not row["silent"]]
    if not usable:
        raise PoolError(f"no usable audio file under {folder}: {'; '.join(left_out)} (silent: first channel all 0)")
    if left_out:
        logger.warning(f"Leaving out audio files of {folder} with nothing to mix: {'; '.join(left_out)}")
    return usable


def _index_row(
    folder: Path, file: ScannedFile, sample_rate: int, cache: _FolderCache | None
) -> dict[str, int]:
    """What the index keeps of one file; a file at another rate (or without a length in its header) is copied
    into the cache first, resampled."""
    path = folder / file.rel_path
    try:
        header = read_header(path)
        silent = False
        if header.frames > 0:
            try:
                check_samples(path, is_reference=True, first_channel_only=True)
            except SilentAudioError:
                silent = True
    except AudioCheckError as err:
        raise PoolError(f"{err} (in the pool {folder}): remove or replace it") from None
    needs_copy = header.sample_rate != sample_rate or not header.length_in_header
    copied = needs_copy and header.frames > 0 and not silent  # left-out files are not copied
    row = {"size": file.size, "mtime_ns": file.mtime_ns, "source_rate": header.sample_rate}
    row.update(num_frames=header.frames, silent=int(silent), copied=int(copied))
    if copied:
        if cache is None:
            raise PoolError(
                f"{path} is at {header.sample_rate} Hz but sample_rate is {sample_rate} Hz: "
                f"pass a cache_dir to resample {folder} once into it"
            )
        row["num_frames"] = _resample_file(path, cache.resampled_path(file.rel_path), sample_rate)
    return row


def _is_current(
    row: dict[str, int] | None, file: ScannedFile, sample_rate: int, cache: _FolderCache | None
) -> bool:
    """Whether a cached row still describes `file`: same size and time, resampled copy (if any) present."""
    if row is None or (row["size"], row["mtime_ns"]) != (file.size, file.mtime_ns):
        return False
    return not row["copied"] or cache.resampled_path(file.rel_path).exists()


# --------------------------------------------------------------------------------------------------
# Pool of single-speaker utterances
# --------------------------------------------------------------------------------------------------
def _detect_speakers(folder: Path, rel_paths: Sequence[str]) -> tuple[str, list[str]]:
    """Tell the folder's layout from its file paths; returns the layout name and each file's speaker."""
    parts = [PurePosixPath(rel_path).parts for rel_path in rel_paths]
    if all(
        len(p) == 3 and re.fullmatch(rf"{re.escape(p[0])}-{re.escape(p[1])}-\d+", p[2].rsplit(".", 1)[0])
        for p in parts
    ):
        return "LibriSpeech", [p[0] for p in parts]
    if all(len(p) == 2 for p in parts):
        if all(len(p[0]) == 3 and p[1].startswith(p[0]) for p in parts):
            return "WSJ0", [p[1][:3] for p in parts]
        return "speaker folders", [p[0] for p in parts]
    example = next((rel_path for rel_path, p in zip(rel_paths, parts) if len(p) != 2), rel_paths[0])
    raise PoolError(f"Cannot tell the speaker of {folder / example}: expected {EXPECTED_LAYOUTS}")


class SourcePool:
    """Single-speaker utterances grouped by speaker: what dynamic mixing draws its sources from."""

    def __init__(self, files: AudioIndex, speaker_ids: Sequence[str], layout: str = "speaker folders"):
        if len(speaker_ids) != len(files):
            raise ValueError(f"Got {len(speaker_ids)} speaker ids for {len(files)} files of {files.folder}")
        self.files = files
        self.layout = layout
        self.speakers = sorted(set(speaker_ids))
        utterances = {speaker: [] for speaker in self.speakers}
        for file_index, speaker in enumerate(speaker_ids):
            utterances[speaker].append(file_index)
        # Per speaker (in the order of `speakers`): indices into `files`
        self.utterances_of_speaker = [np.array(utterances[s], dtype=np.int64) for s in self.speakers]

    @property
    def folder(self) -> str:
        return self.files.folder

    def __repr__(self) -> str:
        return (
            f"SourcePool({self.folder!r}: {self.layout} layout, {len(self.speakers)} speakers, "
            f"{len(self.files)} utterances)"
        )

    @classmethod
    def from_folder(
        cls, folder: str | Path, sample_rate: int, cache_dir: str | Path | None = None
    ) -> SourcePool:
        """Index a folder of utterances, telling the speakers apart from its layout.

        Layouts: a LibriSpeech split (`<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`), WSJ0
        `si_tr_s` (`<spk>/<spk>xxxxx.wav`, speaker = first 3 characters of the name) or any folder of
        speaker folders of audio files (speaker = folder name). Audio at another rate than `sample_rate`
        is resampled once into `cache_dir`, which also keeps the frame counts for the next run.
        """
        folder = Path(folder)
        scanned = scan_audio_files(folder)
        layout, speaker_ids = _detect_speakers(folder, [file.rel_path for file in scanned])
        speaker_of = dict(zip((file.rel_path for file in scanned), speaker_ids))
        files = AudioIndex.build(folder, scanned, sample_rate, cache_dir)
        pool = cls(files, [speaker_of[rel_path] for rel_path in files.rel_paths], layout)
        logger.info(f"Dynamic-mixing pool: {pool}")
        return pool
