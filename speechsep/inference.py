"""Separating recordings of any length with a model (`separate.py`); model folders are `speechsep.model_folder`'s.

Two parts:

- Chunked separation (`separate_long`). A separator is never run on a whole long file, whose memory would grow
  with its length: the mixture is cut into overlapping windows, a batch of windows goes through the model at a
  time, each window's estimates are rescaled to the mixture's level, their speaker order is aligned to the
  previous window on the samples both share (best permutation by correlation), and they are overlap-added with
  a Hann cross-fade, as Asteroid's `LambdaOverlapAdd` does. Peak memory is then the input and output buffers
  plus one batch of windows, whatever the file's length.
- Files (`FileSeparator`). Any sample rate (resampled to the model's) and channel count (mixed down), one
  16-bit WAV per speaker, levels that match the mixture (or peak-normalised), never clipped.
"""

import dataclasses
import functools
import glob
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from speechbrain.inference.separation import SepformerSeparation
from tqdm import tqdm

from speechsep.errors import RecipeError
from speechsep.filterbank import encoder_hop
from speechsep.metrics import best_permutation

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class AudioInputError(RecipeError):
    """An input file that cannot be separated (unreadable, empty, or an output name already taken)."""


# ==================================================================== chunked separation
SeparateBatch = Callable[[torch.Tensor], torch.Tensor]  # mixture [batch, time] -> est_sources [batch, time, num_spks]


def match_mixture_level(est_sources: torch.Tensor, mixture: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """Rescale each estimate so that their sum fits the mixture in the least-squares sense.

    Separators trained with SI-SNR output each source at an arbitrary scale, different in every window; the
    gains g [batch, num_spks] minimising ||mixture - sum_k g_k est_k||^2 give the estimates the mixture's level
    (in a clean mixture, the sources' own level) and make consecutive windows agree. A gain can only amplify
    an estimate as far as the mixture needs it. Diagonal loading (`ridge` times each estimate's energy, plus a
    floor) keeps the system solvable when estimates are alike or silent: identical estimates share the
    mixture equally, a silent window gives silence.

    est_sources: [batch, time, num_spks]; mixture: [batch, time] -> [batch, time, num_spks].
    """
    estimates = est_sources.double()
    gram = estimates.transpose(1, 2) @ estimates  # [batch, num_spks, num_spks]
    target = (estimates.transpose(1, 2) @ mixture.double().unsqueeze(-1)).squeeze(-1)  # [batch, num_spks]
    energy = gram.diagonal(dim1=-2, dim2=-1)  # [batch, num_spks]
    loading = ridge * energy + 1e-9 * energy.mean(dim=-1, keepdim=True) + 1e-30
    gains = torch.linalg.solve(gram + torch.diag_embed(loading), target)  # [batch, num_spks]
    return (estimates * gains.unsqueeze(1)).to(est_sources.dtype)


def align_to_previous(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """The speaker order of `current` that best matches `previous` on the samples they share.

    previous, current: [overlap, num_spks] -> index tensor [num_spks]; `current[:, order]` follows `previous`.
    Scores are normalised correlations; silent overlaps (all scores 0) keep the order as it is.
    """
    previous = previous.double() / (previous.double().norm(dim=0, keepdim=True) + 1e-8)
    current = current.double() / (current.double().norm(dim=0, keepdim=True) + 1e-8)
    correlation = previous.T @ current  # [num_spks (previous), num_spks (current)]
    return best_permutation(correlation.unsqueeze(0))[0]


def separate_shifted(separate_batch: SeparateBatch, mixture: torch.Tensor, shifts: int, hop: int) -> torch.Tensor:
    """The mean of the estimates of `shifts` copies of the mixture, delayed by offsets spread over one `hop`.

    A learned encoder reads the mixture in frames `hop` samples apart, so a delay of a fraction of a hop gives
    the model another view of the same signal and slightly different errors; averaging the views is a cheap
    ensemble (test-time augmentation, like Demucs' --shifts). Each view's estimates are brought to the
    mixture's level (`match_mixture_level`) and into the speaker order of the first view before averaging.
    With shifts=1 this is `separate_batch(mixture)` itself.

    mixture: [batch, time] -> est_sources [batch, time, num_spks].
    """
    if shifts < 1 or shifts > hop:
        raise ValueError(f"shifts must lie in [1, hop={hop}], got {shifts}")
    if shifts == 1:
        return separate_batch(mixture)
    num_samples = mixture.shape[1]
    total = first = None
    for k in range(shifts):
        offset = k * hop // shifts
        delayed = torch.nn.functional.pad(mixture, (offset, 0))
        estimates = match_mixture_level(separate_batch(delayed)[:, offset : offset + num_samples], mixture)
        if first is None:
            first, total = estimates, estimates.clone()
        else:
            for b in range(mixture.shape[0]):
                total[b] += estimates[b][:, align_to_previous(first[b], estimates[b])]
    return total / shifts


def mixture_consistency(est_sources: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """Estimates that sum to the mixture: what they leave out is shared equally between them.

    The unweighted mixture-consistency projection of Wisdom et al. (ICASSP 2019), applied at test time after
    `match_mixture_level` (estimates at an arbitrary scale would get the whole mixture added). Only for
    mixtures that are the sum of the sources: on noisy ones the noise would be shared out too.

    est_sources: [batch, time, num_spks]; mixture: [batch, time] -> [batch, time, num_spks].
    """
    estimates = match_mixture_level(est_sources, mixture)
    residual = mixture.to(estimates.dtype) - estimates.sum(dim=-1)
    return estimates + residual.unsqueeze(-1) / estimates.shape[-1]


def with_mixture_consistency(separate_batch: SeparateBatch) -> SeparateBatch:
    """`separate_batch` followed by `mixture_consistency`."""

    def separate(mixture: torch.Tensor) -> torch.Tensor:
        return mixture_consistency(separate_batch(mixture), mixture)

    return separate


def crossfade(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hann fade-in and fade-out of `length` samples that sum to exactly one, sample by sample."""
    fade_in = torch.sin(0.5 * math.pi * (torch.arange(length, dtype=torch.float64) + 0.5) / length) ** 2
    return fade_in.float(), (1 - fade_in).float()


def separate_long(
    separate_batch: SeparateBatch,
    mixture: torch.Tensor,
    window: int,
    hop: int,
    batch_size: int = 1,
    progress: bool | None = False,
    description: str | None = None,
) -> torch.Tensor:
    """Separate a mixture of any length by overlap-add of windows, keeping each speaker on one track.

    mixture: [time] -> est_sources [time, num_spks], each window's estimates at the mixture's level
    (`match_mixture_level`). A mixture of at most `window` samples is separated in one pass. Otherwise windows
    start every `hop` samples (the last one zero-padded), go through `separate_batch` `batch_size` at a time,
    are put in the speaker order of the previous window on their `window - hop` shared samples, and are
    cross-faded there. `progress`: a tqdm bar (None: only on a terminal).
    """
    if not 0 < hop < window:
        raise ValueError(f"hop ({hop} samples) must be positive and shorter than the window ({window}) so they overlap")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    num_samples = mixture.shape[0]
    if num_samples <= window:
        return match_mixture_level(separate_batch(mixture.unsqueeze(0)).cpu(), mixture.unsqueeze(0))[0]

    overlap = window - hop
    num_windows = math.ceil((num_samples - overlap) / hop)  # the last one reaches the end, no other one does
    fade_in, fade_out = crossfade(overlap)
    est_sources = None  # [time, num_spks], allocated once the number of speakers is known
    previous_tail = None  # the last window's estimates on the samples it shares with the next one
    disable = None if progress is None else not progress  # tqdm: None disables the bar off a terminal
    with tqdm(total=num_windows, unit="window", desc=description, disable=disable, leave=False) as bar:
        for first in range(0, num_windows, batch_size):
            starts = [k * hop for k in range(first, min(first + batch_size, num_windows))]
            chunks = torch.zeros(len(starts), window, dtype=mixture.dtype)  # [batch, window]
            for row, start in enumerate(starts):
                piece = mixture[start : start + window]
                chunks[row, : piece.shape[0]] = piece
            estimates = match_mixture_level(separate_batch(chunks).cpu().float(), chunks)  # [batch, window, num_spks]
            if est_sources is None:
                est_sources = torch.zeros(num_samples, estimates.shape[-1])
            for start, estimate in zip(starts, estimates):
                if previous_tail is not None:
                    estimate = estimate[:, align_to_previous(previous_tail, estimate[:overlap])]
                previous_tail = estimate[hop:]
                weight = torch.ones(window)
                if start > 0:
                    weight[:overlap] = fade_in
                if start + window < num_samples:
                    weight[hop:] = fade_out
                end = min(start + window, num_samples)
                est_sources[start:end] += (estimate * weight.unsqueeze(-1))[: end - start]
            bar.update(len(starts))
    return est_sources


# ==================================================================== files
MIN_WINDOW_S = 0.1  # shorter windows give the model too few encoder frames to separate anything
MIN_HOP_S = 0.01  # shorter hops only multiply the work


@dataclasses.dataclass
class SeparationOptions:
    """How files are separated; times in seconds."""

    window: float = 8.0  # seconds the model sees at once; longer files are cut into windows
    hop: float = 4.0  # seconds between window starts (window - hop is the cross-faded overlap)
    batch_size: int = 1  # windows per forward pass (faster on GPU, more memory)
    output_rate: str = "model"  # "model": the model's sample rate; "input": each input's own
    normalize: str = "mixture"  # "mixture": the mixture's level (least squares); "peak": each track peaks at 0.9
    progress: bool | None = None  # tqdm bar over windows (None: only on a terminal)
    shifts: int = 1  # >1: average over that many sub-hop delays of each window (`separate_shifted`), shifts x slower
    mixture_consistency: bool = False  # estimates that sum to each window (`mixture_consistency`): clean mixtures only

    def __post_init__(self):
        if self.shifts < 1:
            raise ValueError(f"shifts must be at least 1, got {self.shifts}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.window < MIN_WINDOW_S or self.hop < MIN_HOP_S:
            raise ValueError(
                f"window ({self.window} s) and hop ({self.hop} s) must be at least {MIN_WINDOW_S} s and {MIN_HOP_S} s"
            )
        if self.output_rate not in ("model", "input"):
            raise ValueError(f"output_rate must be 'model' or 'input', got {self.output_rate!r}")
        if self.normalize not in ("mixture", "peak"):
            raise ValueError(f"normalize must be 'mixture' or 'peak', got {self.normalize!r}")
        if not 0 < self.hop < self.window:
            raise ValueError(f"hop ({self.hop} s) must be positive and shorter than the window ({self.window} s)")


@dataclasses.dataclass(frozen=True)
class SeparatedFile:
    """What `FileSeparator.separate_file` wrote."""

    outputs: list[Path]
    seconds: float  # the input's duration
    elapsed: float  # wall-clock seconds spent on it


def read_mixture(path: Path, block_frames: int = 1 << 20) -> tuple[np.ndarray, int, int]:
    """A file's audio mixed down to mono float32 [time], its sample rate and channel count.

    Read in blocks and mixed down block by block, so a multichannel file costs one mono buffer.
    """
    try:
        with sf.SoundFile(str(path)) as audio:
            sample_rate, channels = audio.samplerate, audio.channels
            mono = np.empty(audio.frames, dtype=np.float32)
            filled = 0
            for block in audio.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                mono[filled : filled + block.shape[0]] = block.mean(axis=1)
                filled += block.shape[0]
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        reason = getattr(err, "error_string", None) or str(err)
        raise AudioInputError(f"not a readable audio file ({reason})") from None
    if filled == 0:
        raise AudioInputError("no audio samples (empty file)")
    nonfinite = int(np.count_nonzero(~np.isfinite(mono[:filled])))
    if nonfinite:
        raise AudioInputError(f"{nonfinite} of its {filled} samples are NaN or infinite; refusing it")
    return mono[:filled], sample_rate, channels


def write_track(
    path: Path, track: torch.Tensor, sample_rate: int, gain: float = 1.0, block_samples: int = 1 << 20
) -> None:
    """Write a mono track [time] times `gain` as 16-bit PCM, block by block: no full-size copy of the track."""
    with sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as audio:
        for block in torch.split(track, block_samples):
            audio.write((block * gain).nan_to_num(0.0).clamp(-1.0, 1.0).numpy())


class FileSeparator:
    """Separates audio files with one model: any length, sample rate and channel count; one file per speaker."""

    def __init__(self, separator: SepformerSeparation, options: SeparationOptions | None = None):
        self.separator = separator
        self.options = options or SeparationOptions()
        self.sample_rate = int(separator.hparams.sample_rate)
        self.num_spks = int(separator.hparams.num_spks)
        self.separate_batch = separator.separate_batch  # what separates each window
        if self.options.shifts > 1:  # the delays are spread over one hop of the model's encoder
            hop = encoder_hop(separator.mods.encoder)
            if self.options.shifts > hop:
                raise ValueError(f"shifts ({self.options.shifts}) exceed the encoder's hop ({hop} samples)")
            self.separate_batch = functools.partial(
                separate_shifted, separator.separate_batch, shifts=self.options.shifts, hop=hop
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
            window=round(self.options.window * self.sample_rate),
            hop=round(self.options.hop * self.sample_rate),
            batch_size=self.options.batch_size,
            progress=self.options.progress,
            description=description,
        )

    def output_paths(self, path: Path, output_dir: Path) -> list[Path]:
        """Where the tracks of one input go: `<output_dir>/<stem>_s1.wav`, `<stem>_s2.wav`, ..."""
        return [Path(output_dir) / f"{Path(path).stem}_s{k + 1}.wav" for k in range(self.num_spks)]

    def separate_file(self, path: str | Path, output_dir: str | Path) -> SeparatedFile:
        """Write `<output_dir>/<stem>_s1.wav`, `<stem>_s2.wav`, ... for one input file.

        Raises AudioInputError for an unreadable or empty file.
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
            mixture = torchaudio.functional.resample(mixture, input_rate, self.sample_rate)
        est_sources = self.separate(mixture, description=path.name)  # [time, num_spks]
        del mixture

        output_rate = input_rate if self.options.output_rate == "input" else self.sample_rate
        if output_rate != self.sample_rate:
            est_sources = torchaudio.functional.resample(est_sources.T, self.sample_rate, output_rate).T
            est_sources = est_sources[:num_input_samples]
        low, high = torch.aminmax(est_sources, dim=0)
        peaks = torch.maximum(high, -low)  # [num_spks], without a full-size copy
        if self.options.normalize == "peak":
            gains = 0.9 / peaks.clamp(min=1e-8)
        else:
            gains = torch.ones_like(peaks)
            peak = float(peaks.max())
            if peak > 1.0:  # never clip: every track down by the same factor, so their balance is kept
                logger.info(
                    f"{path.name}: estimates peak at {peak:.2f}, scaled down by {20 * math.log10(peak):.1f} dB "
                    "to avoid clipping"
                )
                gains /= peak

        output_dir.mkdir(parents=True, exist_ok=True)
        outputs = self.output_paths(path, output_dir)
        for k, output in enumerate(outputs):
            write_track(output, est_sources[:, k], output_rate, float(gains[k]))
        return SeparatedFile(outputs, num_input_samples / input_rate, time.perf_counter() - started)


def is_audio(path: Path) -> bool:
    """A file whose name says it is audio that folders and globs should pick up."""
    return path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files named by the command line's inputs (files, folders searched recursively, glob patterns).

    Returns the audio files in order, without duplicates, and one error message per input that names nothing.
    """
    files, errors = [], []
    for name in inputs:
        path = Path(name)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if is_audio(p))
            if not found:
                errors.append(f"{name}: folder holds no {'/'.join(s[1:] for s in AUDIO_SUFFIXES)} file")
        elif any(char in name for char in "*?["):
            matches = sorted(Path(match) for match in glob.glob(name, recursive=True))
            found = [m for m in matches if m.is_file()]
            found += [p for m in matches if m.is_dir() for p in sorted(m.rglob("*")) if is_audio(p)]
            if not found:
                errors.append(f"{name}: matches no file")
        else:
            found = []
            errors.append(f"{name}: no such file or folder")
        files.extend(found)
    unique = list(dict.fromkeys(files))
    return unique, errors
