"""Separating audio files (`separate.py`): any sample rate (resampled to the model's) and channel count (mixed
down), one 16-bit WAV per speaker, levels that match the mixture (or peak-normalised), never clipped or overwritten.
"""

import dataclasses
import functools
import glob
import logging
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from speechbrain.inference.separation import SepformerSeparation
from speechbrain.lobes.models.dual_path import DPTNetBlock

from speechsep.data.audio import AUDIO_EXTENSIONS, PEAK_LIMIT, is_audio_name, write_pcm16
from speechsep.data.audio_checks import AudioCheckError, file_problem, printable, read_blocks, read_header
from speechsep.data.augment import fit_length
from speechsep.data.resample import resample
from speechsep.errors import RecipeError
from speechsep.inference.counting import TalkerCount, count_talkers, talker_tracks
from speechsep.inference.separation import (
    in_precision,
    separate_long,
    separate_shifted,
    with_mixture_consistency,
)
from speechsep.locking import folder_locked
from speechsep.models.filterbank import encoder_hop, shortest_input
from speechsep.output_files import is_temporary, write_files
from speechsep.training.hardware import PRECISIONS, PrecisionError, inference_precision

logger = logging.getLogger(__name__)


class SeparationOptionsError(RecipeError):
    """Separation options that cannot be used (window, hop, shifts, batch size, output rate or level)."""


class AudioInputError(RecipeError):
    """An input file that cannot be separated (unreadable, empty, or an output name already taken)."""


SEPARATED_BY = "speechsep separate.py"  # the `software` metadata of every track written here
TRACK_STEM = re.compile(r"_s\d+$")  # `<stem>_s1`, `<stem>_s2`, ...: the names of the tracks written here
MIN_WINDOW_S = 0.1  # shorter windows give the model too few encoder frames to separate anything
MIN_HOP_S = 0.01  # shorter hops only multiply the work
MIN_OVERLAP_S = 0.1  # consecutive windows' speakers are matched on their overlap: a few samples cannot decide it


@dataclasses.dataclass
class SeparationOptions:
    """How files are separated; times in seconds."""

    window: float = 4.0  # longest stretch in seconds the model sees at once; longer files are cut into windows
    hop: float = 3.5  # seconds between window starts, at most (window - hop is the cross-faded overlap)
    batch_size: int = 1  # windows per forward pass (faster on GPU, more memory)
    output_rate: str = "model"  # "model": the model's sample rate; "input": each input's own
    normalize: str = "mixture"  # "mixture": the mixture's level (least squares); "peak": each track peaks at 0.9
    progress: bool | None = None  # tqdm bar over windows (None: only on a terminal)
    shifts: int = 1  # >1: average over that many sub-hop delays of each window (`separate_shifted`), shifts x slower
    mixture_consistency: bool = False  # estimates that sum to each window (`mixture_consistency`): clean mixtures only
    precision: str = "auto"  # what the model computes in: fp32, bf16, fp16, or auto (`inference_precision`)
    keep_all_tracks: bool = False  # write every output, even those that hold no talker (`speechsep.inference.counting`)
    talkers: int | None = None  # the input's number of talkers, when known: as many of the loudest outputs are written

    def __post_init__(self):
        if self.keep_all_tracks and self.talkers is not None:
            raise SeparationOptionsError(
                f"--keep-all-tracks writes every output and --talkers {self.talkers} only {self.talkers}: give one"
            )
        if self.talkers is not None and self.talkers < 1:
            raise SeparationOptionsError(f"--talkers must be at least 1, got {self.talkers}")
        if not (math.isfinite(self.window) and math.isfinite(self.hop)):
            raise SeparationOptionsError(f"window ({self.window} s) and hop ({self.hop} s) must be finite numbers")
        if self.shifts < 1:
            raise SeparationOptionsError(f"shifts must be at least 1, got {self.shifts}")
        if self.batch_size < 1:
            raise SeparationOptionsError(f"batch size must be at least 1, got {self.batch_size}")
        if self.window < MIN_WINDOW_S or self.hop < MIN_HOP_S:
            raise SeparationOptionsError(
                f"window ({self.window} s) and hop ({self.hop} s) must be at least {MIN_WINDOW_S} s and {MIN_HOP_S} s"
            )
        if self.output_rate not in ("model", "input"):
            raise SeparationOptionsError(f"output_rate must be 'model' or 'input', got {self.output_rate!r}")
        if self.precision not in PRECISIONS:
            raise SeparationOptionsError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.normalize not in ("mixture", "peak"):
            raise SeparationOptionsError(f"normalize must be 'mixture' or 'peak', got {self.normalize!r}")
        if not 0 < self.hop < self.window:
            raise SeparationOptionsError(
                f"hop ({self.hop} s) must be positive and shorter than the window ({self.window} s)"
            )
        if self.window - self.hop < MIN_OVERLAP_S - 1e-9:  # seconds as typed: 1.0 - 0.9 is 0.0999...
            # a hop that leaves up to 0.5 s of overlap (at least MIN_OVERLAP_S), rounded down to the millisecond
            proposal = math.floor(1000 * (self.window - max(MIN_OVERLAP_S, min(0.5, self.window / 2))) + 1e-7) / 1000
            fix = (
                f"e.g. --hop {proposal:g}"
                if proposal >= MIN_HOP_S
                else f"the window must be at least {MIN_OVERLAP_S + MIN_HOP_S:g} s"
            )
            raise SeparationOptionsError(
                f"window ({self.window} s) and hop ({self.hop} s) overlap by {self.window - self.hop:.6g} s: at least "
                f"{MIN_OVERLAP_S} s is needed to keep each speaker on one track ({fix})"
            )

    def in_samples(self, sample_rate: int) -> tuple[int, int]:
        """The window and hop in samples at `sample_rate`; SeparationOptionsError unless the hop is at least one
        sample and shorter than the window there (seconds that differ may round to the same count)."""
        window, hop = self.window * sample_rate, self.hop * sample_rate
        if not math.isfinite(window):
            raise SeparationOptionsError(f"window ({self.window} s) is too long")
        window, hop = round(window), round(hop)
        if not 1 <= hop < window:
            raise SeparationOptionsError(
                f"window ({self.window} s) and hop ({self.hop} s) are {window} and {hop} samples at the model's "
                f"{sample_rate} Hz: the hop must be at least 1 sample and shorter than the window"
            )
        return window, hop


@dataclasses.dataclass(frozen=True)
class SeparatedFile:
    """What `FileSeparator.separate_file` wrote."""

    outputs: list[Path]
    seconds: float  # the input's duration
    elapsed: float  # wall-clock seconds spent on it
    count: TalkerCount | None = None  # which outputs hold a talker (None: not counted, as with --stream)
    written: list[int] | None = None  # the model output (0-based) each of `outputs` holds

    def record(self, path: Path) -> dict:
        """The input's line of separate.py's JSON output: its talkers, every output's level, the tracks written."""
        tracks = [{"output": k + 1, "file": str(output)} for k, output in zip(self.written or [], self.outputs)]
        return {"input": str(path), **(self.count.record() if self.count else {}), "tracks": tracks}


def read_mixture(path: Path, block_frames: int = 1 << 20) -> tuple[np.ndarray, int, int]:
    """A file's audio mixed down to mono float32 [time], its sample rate and channel count.

    Read in blocks and mixed down block by block, so a multichannel file costs one mono buffer; what
    `speechsep.data.audio_checks` refuses (a FIFO, a dangling link, an unreadable file) is its AudioCheckError.
    """
    header = read_header(path)  # the length measured where the header has none
    mono = np.empty(header.frames, dtype=np.float32)
    filled = 0
    for block in read_blocks(path, block_frames):
        mono[filled : filled + block.shape[0]] = block.mean(axis=1)
        filled += block.shape[0]
    if filled == 0:
        raise AudioInputError("no audio samples (empty file)")
    nonfinite = int(np.count_nonzero(~np.isfinite(mono[:filled])))
    if nonfinite:
        raise AudioInputError(f"{nonfinite} of its {filled} samples are NaN or infinite; refusing it")
    return mono[:filled], header.sample_rate, header.channels


def mixes_batch_items(masknet: torch.nn.Module) -> bool:
    """Whether a mask network's output for one batch item depends on the others: SpeechBrain's `DPTNetBlock`
    runs its sequence-first attention and LSTM on batch-first tensors, so it attends and recurs across the batch
    (as it was trained: its weights expect it; only batches of one keep windows apart)."""
    return any(isinstance(module, DPTNetBlock) for module in masknet.modules())


class FileSeparator:
    """Separates audio files with one model: any length, sample rate and channel count; one file per speaker."""

    def __init__(self, separator: SepformerSeparation, options: SeparationOptions | None = None):
        self.separator = separator
        self.options = options or SeparationOptions()
        self.sample_rate = int(separator.hparams.sample_rate)
        self.num_spks = int(separator.hparams.num_spks)
        self.window, self.hop = self.options.in_samples(self.sample_rate)
        modules = getattr(separator, "mods", None)
        self.min_samples = shortest_input(modules.encoder, modules.masknet) if modules is not None else 1
        self.batch_size = self.options.batch_size
        if self.batch_size > 1 and modules is not None and mixes_batch_items(modules.masknet):
            logger.info(
                "One window per forward pass: this model's DPTNet blocks let the items of a batch affect each other"
            )
            self.batch_size = 1
        if self.window < self.min_samples:
            raise SeparationOptionsError(
                f"window ({self.options.window} s) is {self.window} samples at the model's {self.sample_rate} Hz, "
                f"shorter than the model's shortest input ({self.min_samples} samples): use --window "
                f"{math.ceil(100 * self.min_samples / self.sample_rate) / 100:g} or more"
            )
        device = str(getattr(separator, "device", "cpu"))
        try:
            self.precision = inference_precision(self.options.precision, device)
        except PrecisionError as err:
            raise SeparationOptionsError(str(err)) from None
        if self.options.talkers is not None and self.options.talkers > self.num_spks:
            raise SeparationOptionsError(
                f"--talkers {self.options.talkers}: this model has {self.num_spks} outputs, so at most {self.num_spks}"
            )
        self.separate_batch = in_precision(separator.separate_batch, self.precision, device)  # separates a batch
        if self.options.shifts > 1:  # the delays are spread over one hop of the model's encoder
            hop = encoder_hop(separator.mods.encoder)
            if self.options.shifts > hop:
                raise SeparationOptionsError(f"shifts ({self.options.shifts}) exceed the encoder's hop ({hop} samples)")
            self.separate_batch = functools.partial(
                separate_shifted, self.separate_batch, shifts=self.options.shifts, hop=hop
            )
        if self.options.mixture_consistency:
            self.separate_batch = with_mixture_consistency(self.separate_batch)
        self._said: set[str] = set()

    def _say_once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            logger.info(message)

    @torch.inference_mode()
    def separate(self, mixture: torch.Tensor, description: str | None = None) -> torch.Tensor:
        """mixture [time] at the model's rate -> est_sources [time, num_spks] at the mixture's level."""
        return separate_long(
            self.separate_batch,
            mixture,
            window=self.window,
            hop=self.hop,
            batch_size=self.batch_size,
            progress=self.options.progress,
            description=description,
            min_window=self.min_samples,
        )

    def output_paths(self, path: Path, output_dir: Path) -> list[Path]:
        """Where the tracks of one input go: `<output_dir>/<stem>_s1.wav`, `<stem>_s2.wav`, ..."""
        return track_paths(path, output_dir, self.num_spks)

    def separate_file(self, path: str | Path, output_dir: str | Path, overwrite: bool = False) -> SeparatedFile:
        """Write `<output_dir>/<stem>_s1.wav`, `<stem>_s2.wav`, ... for one input file: all of them or none
        (`write_tracks`). Raises AudioInputError for an unreadable or empty file, and
        `speechsep.output_files.OutputError` if a track name is taken or cannot be written.
        """
        path, output_dir = Path(path), Path(output_dir)
        started = time.perf_counter()
        samples, input_rate, channels = read_mixture(path)
        num_input_samples = samples.shape[0]
        if channels > 1:
            self._say_once(f"Mixing {channels}-channel inputs down to mono")
        mixture = torch.from_numpy(samples)
        del samples  # `mixture` is the input buffer from here on
        if input_rate != self.sample_rate:
            self._say_once(f"Resampling {input_rate} Hz inputs to the model's {self.sample_rate} Hz")
            mixture = resample(mixture, input_rate, self.sample_rate)
        if mixture.shape[0] < self.min_samples:
            raise AudioInputError(
                f"{mixture.shape[0]} samples at the model's {self.sample_rate} Hz, shorter than the model's shortest "
                f"input ({self.min_samples} samples)"
            )
        est_sources = self.separate(mixture, description=path.name)  # [time, num_spks]
        count = count_talkers(est_sources, mixture, self.sample_rate)
        del mixture
        written, est_sources = self.tracks_to_write(est_sources, count)

        output_rate = input_rate if self.options.output_rate == "input" else self.sample_rate
        if output_rate != self.sample_rate:
            resampled = resample(est_sources.T, self.sample_rate, output_rate).T  # [time, tracks]
            est_sources = fit_length(resampled[None], num_input_samples)[0]  # the input's length, to the sample
        gains = torch.ones(0)  # no track: nothing holds a talker
        if est_sources.shape[1]:
            low, high = torch.aminmax(est_sources, dim=0)
            gains = track_gains(torch.maximum(high, -low), self.options.normalize, path)  # peaks without a full copy
        writers = [
            functools.partial(_write_track, signal=est_sources[:, k], sample_rate=output_rate, gain=float(gains[k]))
            for k in range(est_sources.shape[1])
        ]
        outputs = write_tracks(path, output_dir, writers, overwrite)
        elapsed = time.perf_counter() - started
        return SeparatedFile(outputs, num_input_samples / input_rate, elapsed, count, written)

    def tracks_to_write(self, est_sources: torch.Tensor, count: TalkerCount) -> tuple[list[int], torch.Tensor]:
        """The outputs to write (0-based) and their signals [time, tracks]: those that hold a talker, each with the
        copies of it added back (`talker_tracks`); every output with `keep_all_tracks`; the `talkers` loudest."""
        if self.options.keep_all_tracks:
            return list(range(self.num_spks)), est_sources
        if self.options.talkers is not None:
            loudest = sorted(np.argsort(-np.array(count.level_db()), kind="stable")[: self.options.talkers].tolist())
            return loudest, est_sources[:, loudest]
        return count.tracks, talker_tracks(est_sources, count)


def track_paths(path: Path, output_dir: Path, num_spks: int) -> list[Path]:
    """Where the tracks of one input go: `<output_dir>/<stem>_s1.wav`, `<stem>_s2.wav`, ..."""
    return [Path(output_dir) / f"{Path(path).stem}_s{k + 1}.wav" for k in range(num_spks)]


def track_gains(peaks: torch.Tensor, normalize: str, path: Path) -> torch.Tensor:
    """The gain of each track [num_spks] from its peak: "peak", each peaks at PEAK_LIMIT; "mixture", the level
    as it is, unless a track would clip: then every track down by the same factor, so their balance is kept."""
    if normalize == "peak":
        return PEAK_LIMIT / peaks.clamp(min=1e-8)
    gains = torch.ones_like(peaks)
    peak = float(peaks.max())
    if peak > 1.0:
        logger.info(
            f"{printable(path.name)}: estimates peak at {peak:.2f}, scaled down by {20 * math.log10(peak):.1f} dB "
            "to avoid clipping"
        )
        gains /= peak
    return gains


def write_tracks(path: Path, output_dir: Path, writers: list, overwrite: bool) -> list[Path]:
    """Write an input's tracks with their `writers` (one per speaker, see `speechsep.output_files`): all or none.

    Without `overwrite`, the names are created exclusively, so that another process writing them at the same
    time cannot have its tracks mixed with these. With it, they replace the earlier ones while the folder is
    locked, and earlier tracks of this input beyond the ones written now are removed in the same step: the
    input's tracks are always one model's whole set. -> the tracks' paths.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs = track_paths(path, output_dir, len(writers))
    removed: list[Path] = []

    def superseded() -> list[Path]:  # called with the folder locked: no other run names tracks meanwhile
        removed.extend(earlier_tracks_beyond(output_dir, path.stem, len(writers)))
        return removed

    if writers:
        write_files(dict(zip(outputs, writers)), overwrite, superseded if overwrite else None)
    elif overwrite:  # no track (nothing holds a talker): the earlier ones go, under the lock a group would take
        with folder_locked(output_dir):
            for track in superseded():
                track.unlink(missing_ok=True)
    if removed:
        logger.info(
            f"{printable(path.name)}: removed {', '.join(printable(track.name) for track in removed)}, tracks of "
            f"an earlier run with more tracks (this one writes {len(writers)})"
        )
    return outputs


def _write_track(path: Path, signal: torch.Tensor, sample_rate: int, gain: float) -> None:
    write_pcm16(path, signal, sample_rate, gain, software=SEPARATED_BY)


def is_separated_track(path: Path) -> bool:
    """Whether a file is a track that `FileSeparator` wrote: named `<stem>_s<k>`, and its metadata says so."""
    if not TRACK_STEM.search(path.stem):
        return False
    try:
        with open(path, "rb") as file, sf.SoundFile(file) as audio:  # by file object: any name the system allows
            return audio.software.startswith(SEPARATED_BY)
    except (sf.LibsndfileError, RuntimeError, OSError):
        return False


def earlier_tracks_beyond(output_dir: Path, stem: str, count: int) -> list[Path]:
    """The tracks `<stem>_s<k>.wav` in `output_dir` with k > `count` that separate.py wrote (`is_separated_track`):
    what an overwrite by a model of `count` speakers leaves stale."""
    found = []
    for track in output_dir.glob(f"{glob.escape(stem)}_s*.wav"):
        number = track.stem[len(stem) + 2 :]
        if number.isascii() and number.isdigit() and int(number) > count and is_separated_track(track):
            found.append(track)
    return sorted(found, key=lambda track: int(track.stem[len(stem) + 2 :]))


def is_audio(path: Path) -> bool:
    """A name that says it is audio, for folders and globs to pick up (not a file being written): anything but a
    folder, so that a broken link or a FIFO among the inputs is one error line for it rather than left out."""
    return is_audio_name(path) and not path.is_dir() and not is_temporary(path)


def expand_inputs(inputs: list[str], output_dir: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """Files named by the command line's inputs (files, folders searched recursively, glob patterns).

    Returns the audio files in order, each file once however it is spelt (`a.wav`, `./x/../a.wav`, a link to
    it), and one error message per input that names nothing. A named FIFO, device or broken link is an error
    saying so, not "no such file". Folders and globs skip what separating writes: the tracks written earlier,
    anywhere, and everything in `output_dir` when it lies inside a folder searched (else every rerun would
    separate the last one's tracks again). A file named as it is is always taken. The tracks skipped are
    counted: an info line for a folder or glob that holds inputs too, else its error says so.
    """
    output_dir = Path(output_dir).resolve() if output_dir is not None else None

    def is_track(path: Path) -> bool:
        return is_audio(path) and path.is_file() and is_separated_track(path)  # a FIFO is never opened here

    def is_input(path: Path, skipped_dir: Path | None = None) -> bool:
        """An audio file outside `skipped_dir`, once `is_track` has said it is no track."""
        return is_audio(path) and (skipped_dir is None or skipped_dir not in path.resolve().parents)

    def search(folder: Path) -> tuple[list[Path], int]:
        """The inputs under `folder`, and how many tracks written earlier were skipped there."""
        skipped_dir = output_dir if output_dir is not None and folder.resolve() in output_dir.parents else None
        found, tracks = [], 0
        for path in sorted(folder.rglob("*")):
            if is_track(path):
                tracks += 1
            elif is_input(path, skipped_dir):
                found.append(path)
        return found, tracks

    files, errors = [], []
    for name in inputs:
        path = Path(name)
        tracks = 0  # tracks written earlier that a folder or glob holds, skipped
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found, tracks = search(path)
            if not found and not tracks:
                errors.append(f"{name}: folder holds no {'/'.join(s[1:] for s in AUDIO_EXTENSIONS)} file")
        elif os.path.lexists(path):
            found = []
            errors.append(f"{name}: {file_problem(path)}")
        elif any(char in name for char in "*?["):
            matches = sorted(Path(match) for match in glob.glob(name, recursive=True))
            track_matches = {m for m in matches if is_track(m)}
            tracks = len(track_matches)
            found = [
                m
                for m in matches
                if not m.is_dir() and m not in track_matches and (is_input(m) or not is_audio_name(m))
            ]
            for folder in (m for m in matches if m.is_dir()):
                in_folder, tracks_in_folder = search(folder)
                found += in_folder
                tracks += tracks_in_folder
            if not found and not tracks:
                errors.append(f"{name}: matches no file")
        else:
            found = []
            errors.append(f"{name}: no such file or folder")
        if tracks:
            skipped = (
                f"{tracks} files are tracks that separate.py wrote earlier"
                if tracks > 1
                else "1 file is a track that separate.py wrote earlier"
            )
            if found:
                logger.info(f"{name}: {skipped}, skipped (name a track itself to separate it)")
            else:
                errors.append(f"{name}: nothing to separate: {skipped}, skipped; to separate one, name the file itself")
        files.extend(found)
    seen, unique = set(), []
    for path in files:  # the first spelling of each file
        if (resolved := os.path.realpath(path)) not in seen:
            seen.add(resolved)
            unique.append(path)
    return unique, errors


def input_failure(path: Path, err: Exception) -> str:
    """The one line that says why one input was not separated (without `error: `)."""
    if isinstance(err, AudioCheckError):  # names the file itself
        return str(err)
    reason = str(err) if isinstance(err, RecipeError) else f"{type(err).__name__}: {err}"
    return f"{path}: {' '.join(reason.split())}"
