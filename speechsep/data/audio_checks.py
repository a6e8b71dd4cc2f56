"""Whether a piece of audio is usable for a purpose: the one place every way in asks (prepare_data.py's trees,
manifests given with `skip_prep`, dynamic-mixing pools, separate.py's inputs).

The checks, cheapest first: a regular file that can be opened (not a dangling link, a FIFO, a device or a
folder; a FIFO would block the reader), a header libsndfile reads, the sample rate, the channel count, a length
of at least the model's shortest input, then, reading samples only where they can be wrong, finite samples and,
for a reference, not all zero. Each failure is an `AudioCheckError` whose message is one line naming the file.
Files are opened by file descriptor, so names that are not UTF-8 are read like any other, and a FLAC file whose
header does not say its length is measured rather than taken to hold 2^63 samples.
"""

import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speechsep.errors import RecipeError

FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # the only encodings that can hold NaN or inf
BLOCK_FRAMES = 1 << 16  # samples read at a time when checking a file's samples
FIRST_PCM_BLOCK_FRAMES = 4096  # a PCM reference is rarely all 0 for that long: most are done after one small read
UNKNOWN_LENGTH = 1 << 62  # libsndfile reports a stream without a length in its header as SF_COUNT_MAX frames


class AudioCheckError(RecipeError):
    """A file that is not usable for its purpose; the message is one line naming it and what is wrong."""


class SilentAudioError(AudioCheckError):
    """A reference whose every sample (of its first channel, where that is what is read) is 0."""


@dataclass(frozen=True)
class AudioRequirements:
    """What a purpose asks of a file: a rate (None: any), one channel or any, a shortest length in samples."""

    sample_rate: int | None = None
    mono: bool = True
    min_samples: int = 1


@dataclass(frozen=True)
class AudioHeader:
    """What a file's header says, with the length measured where the header does not give it."""

    sample_rate: int
    channels: int
    frames: int
    subtype: str
    length_in_header: bool = True  # False: a stream whose header gives no length (readers must not seek to its end)


def file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be opened as an audio file (dangling link, not a regular file, unreadable), or None."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (to {os.readlink(path)})"
        return "no such file"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(status.st_mode):
        return "a folder, not an audio file"
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file (a FIFO, socket or device), so it is not read"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def check_file(path: str | Path) -> None:
    """Fail naming `path` unless it is a regular file that can be read."""
    problem = file_problem(path)
    if problem:
        raise AudioCheckError(f"{path}: {problem}")


def _unreadable(path: str | Path, err: Exception) -> AudioCheckError:
    reason = getattr(err, "error_string", None) or getattr(err, "strerror", None) or str(err)
    return AudioCheckError(f"unreadable audio file {path}: {reason}")


@contextmanager
def open_audio(path: str | Path) -> Iterator[sf.SoundFile]:
    """An open SoundFile of `path` after `check_file`; a file libsndfile cannot open is an AudioCheckError."""
    check_file(path)
    try:
        audio = sf.SoundFile(os.open(path, os.O_RDONLY), closefd=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise _unreadable(path, err) from None
    with audio:
        yield audio


def _seekable_to(path: str | Path, frame: int) -> bool:
    with open_audio(path) as audio:
        try:
            audio.seek(frame)
        except (sf.LibsndfileError, RuntimeError):
            return False
        return True


def count_frames(path: str | Path, audio: sf.SoundFile) -> int:
    """The number of frames of an open file: its header's, or, for a stream whose header gives none (a FLAC
    written while recording), the first frame it cannot seek to, found by bisection."""
    if audio.frames < UNKNOWN_LENGTH:
        return audio.frames
    if not _seekable_to(path, 0):
        return 0
    low, high = 0, 1  # seekable to low, not to high: the length is the first frame it cannot seek to
    while high < UNKNOWN_LENGTH and _seekable_to(path, high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _seekable_to(path, middle) else (low, middle)
    return high


def read_header(path: str | Path) -> AudioHeader:
    """Rate, channels, length and encoding of `path`, or an AudioCheckError naming it."""
    with open_audio(path) as audio:
        frames = count_frames(path, audio)
        return AudioHeader(audio.samplerate, audio.channels, frames, audio.subtype, audio.frames < UNKNOWN_LENGTH)


def _read_into(path: str | Path, audio: sf.SoundFile, block: np.ndarray, reaches_end: bool) -> None:
    """Fill `block` from `audio`'s position. libsndfile fails on the read that reaches the end of a stream whose
    header gives no length, after it has filled the block: only that failure is not one."""
    try:
        audio.read(len(block), dtype=block.dtype.name, always_2d=True, out=block)
    except (sf.LibsndfileError, RuntimeError) as err:
        if not (reaches_end and audio.frames >= UNKNOWN_LENGTH):
            raise _unreadable(path, err) from None


def read_blocks(path: str | Path, block_frames: int = BLOCK_FRAMES, dtype: str = "float32") -> Iterator[np.ndarray]:
    """The samples of `path` as [frames, channels] blocks of at most `block_frames`, reading no further than the
    file's measured length."""
    with open_audio(path) as audio:
        total = count_frames(path, audio)
        position = 0
        while position < total:
            block = np.empty((min(block_frames, total - position), audio.channels), dtype=dtype)
            _read_into(path, audio, block, position + len(block) == total)
            position += len(block)
            yield block


def read_segment(path: str | Path, start: int = 0, frames: int | None = None, dtype: str = "float32") -> np.ndarray:
    """Frames `start` to `start + frames` of `path` (to its end where `frames` is None or reaches past it) as
    [frames, channels], reading only those; a file whose header gives no length is measured first, so that
    training reads it like any other instead of seeking past its end."""
    with open_audio(path) as audio:
        total = count_frames(path, audio)
        start = min(start, total)
        count = total - start if frames is None else min(frames, total - start)
        if start:
            audio.seek(start)
        block = np.empty((count, audio.channels), dtype=dtype)
        _read_into(path, audio, block, start + count == total)
        return block


def check_header(path: str | Path, requirements: AudioRequirements) -> AudioHeader:
    """`read_header`, failing naming the file on 0 samples, a rate, channel count or length `requirements` refuse."""
    header = read_header(path)
    if header.frames == 0:
        raise AudioCheckError(f"empty audio file {path} (0 samples)")
    if requirements.mono and header.channels != 1:
        raise AudioCheckError(f"{path} has {header.channels} channels, expected mono")
    if requirements.sample_rate is not None and header.sample_rate != requirements.sample_rate:
        raise AudioCheckError(
            f"{path} is sampled at {header.sample_rate} Hz, the config says {requirements.sample_rate} Hz"
        )
    if header.frames < requirements.min_samples:
        raise AudioCheckError(
            f"{path} is {header.frames} samples long, shorter than the model's shortest input "
            f"({requirements.min_samples} samples)"
        )
    return header


def check_samples(path: str | Path, is_reference: bool, first_channel_only: bool = False) -> None:
    """Fail on NaN/inf (they make every SI-SNR nan) and on an all-zero reference (no SDR against silence).

    Reads in blocks, and only what can be wrong: PCM cannot hold NaN, so a PCM reference is read up to its first
    non-zero block and a PCM mixture or noise not at all; float files are read whole. `first_channel_only`: the
    channel a reader of the first channel gets is the one that must not be silent.
    """
    header = read_header(path)
    is_float = header.subtype in FLOAT_SUBTYPES
    if not (is_float or is_reference):
        return
    dtype = "float32" if is_float else "int32"  # float32 as training reads it; int32 keeps every PCM step
    is_silent = is_reference
    start = 0
    block_frames = BLOCK_FRAMES if is_float else FIRST_PCM_BLOCK_FRAMES
    for block in read_blocks(path, block_frames, dtype):
        if is_float and not np.isfinite(block).all():
            index = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise AudioCheckError(f"non-finite sample (NaN or inf) in {path} at sample {index}")
        is_silent = is_silent and not (block[:, 0] if first_channel_only else block).any()
        if not (is_float or is_silent):
            break
        start += len(block)
    if is_silent:
        which = "every sample of its first channel is 0" if first_channel_only else "every sample is 0"
        raise SilentAudioError(f"silent reference {path}: {which}, so no SDR can be computed against it")


def check_example(
    paths: Sequence[str | Path], reference_paths: Sequence[str | Path], requirements: AudioRequirements
) -> int:
    """Check a mixture and its signals (`paths`, the mixture first; `reference_paths` among them are the
    targets): each one usable, all of the mixture's length. Returns that length in samples."""
    frames = None
    references = {str(path) for path in reference_paths}
    for path in paths:
        if not _is_utf8(str(path)):
            raise AudioCheckError(f"{path}: its name is not UTF-8, which manifests are written in; rename it")
        header = check_header(path, requirements)
        if frames is not None and header.frames != frames:
            raise AudioCheckError(f"{path} has {header.frames} samples, its mixture {paths[0]} has {frames}")
        frames = header.frames if frames is None else frames
    for path in paths:  # after the header checks: reading samples is the expensive part
        check_samples(path, is_reference=str(path) in references)
    return frames


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a name that was not UTF-8 on disk holds surrogate escapes
        return False
    return True


def printable(text: object) -> str:
    """`str(text)` with what a name that is not UTF-8 holds (surrogate escapes) written as backslash escapes, for
    UTF-8 files such as skipped_files.csv."""
    return str(text).encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


def name_problem(name: str) -> str | None:
    """Why `name` (an example ID, a file stem) cannot name files written under an output folder, or None."""
    if not name:
        return "is empty, so it cannot name a file"
    if not _is_utf8(name):
        return f"'{name}' is not UTF-8"
    if "/" in name or "\\" in name or "\0" in name:
        return f"'{name}' holds a path separator or NUL: files named after it would land outside their folder"
    return None
