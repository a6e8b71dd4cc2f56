"""Separating files and pipes as streams (`separate.py --stream`): chunk by chunk, as a live input would be.

Each chunk goes through a `StreamSeparator` as it comes, and its estimates are brought to the mixture's level
from the past alone (`RunningLevel`). A file's estimates are written as they come to a hidden scratch file
beside its tracks, then the tracks are written from it (16-bit, all or none, never clipped: `write_tracks`), so
memory stays flat however long the input. Raw 16-bit PCM on stdin is separated to raw 16-bit PCM on stdout, one
interleaved channel per speaker, each chunk written and flushed as soon as it is separated.
"""

import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
from speechbrain.inference.separation import SepformerSeparation

from speechsep.data.audio import write_pcm16
from speechsep.data.audio_checks import read_blocks, read_header
from speechsep.errors import RecipeError
from speechsep.inference.files import (
    SEPARATED_BY,
    AudioInputError,
    SeparatedFile,
    SeparationOptionsError,
    track_gains,
    track_paths,
    write_tracks,
)
from speechsep.inference.model_config import MODULE_NAMES
from speechsep.inference.streaming import RunningLevel, StreamingError, StreamSeparator, streaming_refusal
from speechsep.models.filterbank import encoder_hop
from speechsep.output_files import scratch_file, write_failed
from speechsep.training.hardware import PRECISIONS, PrecisionError, inference_precision

logger = logging.getLogger(__name__)

PCM16_SCALE = 32768.0  # 16-bit samples <-> floats in [-1, 1)
LEVEL_SECONDS = 2.0  # the past that `RunningLevel` fits the estimates' level on
SCRATCH_BLOCK = 1 << 16  # samples per block when the tracks are written from the scratch file
SCRATCH_FORMAT = "W64"  # 64-bit sizes: a WAV scratch file would be read back cut at 4 GiB (18 h at 8 kHz)
MAX_CHUNK_MS = 10_000.0  # a longer chunk is no stream
FILE_MAGIC = {b"RIFF": "WAV", b"RF64": "WAV", b"fLaC": "FLAC", b"OggS": "Ogg"}  # headers of files piped in by mistake


class StdoutError(RecipeError):
    """The separated stream could not be written to stdout."""


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How inputs are streamed."""

    chunk_ms: float = 10.0  # the input is handed over in chunks of this many milliseconds
    precision: str = "auto"  # what the model computes in (`inference_precision`); "auto" is fp32 for a stream
    normalize: str = "mixture"  # "mixture": the mixture's level, from the past; "peak" (files only): 0.9 peaks

    def __post_init__(self):
        if not (math.isfinite(self.chunk_ms) and 0 < self.chunk_ms <= MAX_CHUNK_MS):
            raise SeparationOptionsError(f"--chunk-ms must lie in (0, {MAX_CHUNK_MS:g}], got {self.chunk_ms}")
        if self.precision not in PRECISIONS:
            raise SeparationOptionsError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.normalize not in ("mixture", "peak"):
            raise SeparationOptionsError(f"normalize must be 'mixture' or 'peak', got {self.normalize!r}")


class StreamingFileSeparator:
    """Separates files and pipes with one causal model, chunk by chunk; one track (or channel) per speaker."""

    def __init__(self, separator: SepformerSeparation, options: StreamOptions | None = None):
        self.options = options or StreamOptions()
        self.modules = {name: separator.mods[name] for name in MODULE_NAMES}
        refusal = streaming_refusal(self.modules)
        if refusal:
            raise StreamingError(f"this model cannot stream: {refusal}")
        self.sample_rate = int(separator.hparams.sample_rate)
        self.num_spks = int(separator.hparams.num_spks)
        self.chunk = round(self.options.chunk_ms * self.sample_rate / 1000)
        hop = encoder_hop(self.modules["encoder"])
        if self.chunk < hop:
            shortest = math.ceil(1000 * hop / self.sample_rate * 100) / 100
            raise SeparationOptionsError(
                f"--chunk-ms {self.options.chunk_ms:g} is {self.chunk} samples at the model's {self.sample_rate} Hz, "
                f"less than one hop of its encoder ({hop} samples): no chunk would complete a frame; use --chunk-ms "
                f"{shortest:g} or more"
            )
        self.device = str(getattr(separator, "device", "cpu"))
        precision = self.options.precision
        if precision == "auto":  # a chunk's products are too small for bf16 to pay (bench/RESULTS.md), and fp32
            precision = "fp32"  # streams are the offline model's output
        try:
            self.precision = inference_precision(precision, self.device)
        except PrecisionError as err:
            raise SeparationOptionsError(str(err)) from None
        self.latency_ms = 1000 * StreamSeparator(self.modules).latency_samples / self.sample_rate
        self._said: set[str] = set()

    def output_paths(self, path: Path, output_dir: Path) -> list[Path]:
        return track_paths(path, output_dir, self.num_spks)

    def separate_chunks(self, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Mixture chunks [time] -> separated chunks [time', num_spks] as the model completes them; the last one
        when `chunks` ends: as many samples in all as came in."""
        stream = StreamSeparator(self.modules, self.precision, self.device)
        level = RunningLevel(self.num_spks, self.sample_rate, LEVEL_SECONDS)
        waiting = torch.zeros(0)  # mixture samples whose estimates are not out yet
        for chunk in chunks:
            waiting = torch.cat([waiting, chunk])
            est_sources = stream.push(chunk)
            yield level(est_sources, waiting[: est_sources.shape[0]])
            waiting = waiting[est_sources.shape[0] :]
        yield level(stream.finish(), waiting)

    def separate_file(self, path: str | Path, output_dir: str | Path, overwrite: bool = False) -> SeparatedFile:
        """Write `<output_dir>/<stem>_s1.wav`, ... for one file separated as a stream: all of them or none."""
        path, output_dir = Path(path), Path(output_dir)
        started = time.perf_counter()
        header = read_header(path)
        if header.sample_rate != self.sample_rate:
            raise AudioInputError(
                f"{header.sample_rate} Hz, and --stream takes the model's {self.sample_rate} Hz as a live input "
                "would come: resample it first, or separate it without --stream"
            )
        if header.channels > 1 and "mono" not in self._said:
            self._said.add("mono")
            logger.info(f"Mixing {header.channels}-channel inputs down to mono")
        output_dir.mkdir(parents=True, exist_ok=True)
        first_track = track_paths(path, output_dir, self.num_spks)[0]
        peaks = torch.zeros(self.num_spks)
        with scratch_file(first_track) as scratch:
            with sf.SoundFile(
                os.fsencode(scratch),
                "w",
                samplerate=self.sample_rate,
                channels=self.num_spks,
                subtype="FLOAT",
                format=SCRATCH_FORMAT,
            ) as estimates:
                for est_sources in self.separate_chunks(_file_chunks(path, self.chunk)):
                    if est_sources.shape[0]:
                        peaks = torch.maximum(peaks, est_sources.abs().amax(dim=0))
                    try:
                        estimates.write(est_sources.numpy())
                    except (OSError, RuntimeError) as err:  # a full disk, a file size limit
                        raise write_failed(first_track, err) from None
            gains = track_gains(peaks, self.options.normalize, path)
            writers = [
                functools.partial(_write_channel, scratch=scratch, channel=k, sample_rate=self.sample_rate, gain=gain)
                for k, gain in enumerate(gains.tolist())
            ]
            outputs = write_tracks(path, output_dir, writers, overwrite)
        return SeparatedFile(outputs, header.frames / header.sample_rate, time.perf_counter() - started)

    def separate_pipe(self, reader: BinaryIO, writer: BinaryIO) -> tuple[int, int]:
        """Raw 16-bit little-endian mono PCM from `reader` -> raw 16-bit PCM on `writer`, one interleaved channel
        per speaker, flushed chunk by chunk. -> (samples separated, samples clipped to the 16-bit range)."""
        num_samples = clipped = 0
        for est_sources in self.separate_chunks(_pcm_chunks(reader, self.chunk)):
            num_samples += est_sources.shape[0]
            clipped += int((est_sources.abs() > 1.0).sum())
            pcm = (est_sources * PCM16_SCALE).round().clamp(-PCM16_SCALE, PCM16_SCALE - 1).to(torch.int16)
            try:
                writer.write(pcm.numpy().astype("<i2").tobytes())  # row-major [time, num_spks]: interleaved
                writer.flush()
            except BrokenPipeError:
                raise
            except OSError as err:  # a full disk, a file size limit
                raise StdoutError(f"cannot write to stdout: {err.strerror or err}") from None
        return num_samples, clipped


def _file_chunks(path: Path, chunk: int) -> Iterator[torch.Tensor]:
    """A file's samples mixed down to mono, `chunk` at a time; AudioInputError on a NaN or infinite sample."""
    position = 0
    for block in read_blocks(path, chunk):
        mono = block.mean(axis=1)
        bad = np.flatnonzero(~np.isfinite(mono))
        if bad.size:
            raise AudioInputError(f"sample {position + int(bad[0])} is NaN or infinite; refusing it")
        position += mono.shape[0]
        yield torch.from_numpy(mono)
    if position == 0:
        raise AudioInputError("no audio samples (empty file)")


def _pcm_chunks(reader: BinaryIO, chunk: int) -> Iterator[torch.Tensor]:
    """Raw 16-bit little-endian samples from `reader`, `chunk` at a time (the last one shorter), as floats; an
    odd last byte is left out with a warning. A stream that starts as an audio file is refused."""
    first = True
    while True:
        data = reader.read(2 * chunk)
        if first and data[:4] in FILE_MAGIC:
            raise AudioInputError(
                f"stdin holds a {FILE_MAGIC[data[:4]]} file, not raw PCM: give the file's name instead of -, or "
                "decode it to raw 16-bit mono PCM first (e.g. sox FILE -t raw -e signed -b 16 -c 1 -)"
            )
        first = False
        if len(data) % 2:
            more = reader.read(1)
            data += more
            if not more:
                logger.warning("stdin ended on half a 16-bit sample: its last byte is left out")
                data = data[:-1]
        if not data:
            return
        yield torch.from_numpy(np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_SCALE)


def _write_channel(path: Path, scratch: Path, channel: int, sample_rate: int, gain: float) -> None:
    blocks = sf.blocks(os.fsencode(scratch), blocksize=SCRATCH_BLOCK, dtype="float32", always_2d=True)
    write_pcm16(
        path, (torch.from_numpy(block[:, channel].copy()) for block in blocks), sample_rate, gain, software=SEPARATED_BY
    )
