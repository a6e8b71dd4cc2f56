"""Audio file conventions shared by every tool: which files are audio, the peak limit, the one writer.

`write_pcm16` is how the recipe writes float signals (test-time examples, separated tracks); the synthetic
corpus writes its own integer samples (`demo.corpus.synth_corpus`) so that its mixtures are exact sums.
"""

import os
from collections.abc import Iterable
from pathlib import Path

import soundfile as sf
import torch

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")  # matched in any case: `a.WAV` is audio like `a.wav`
PEAK_LIMIT = 0.9  # mixtures are scaled below it (LibriMix, upstream SpeechBrain); written examples peak at it


def is_audio_name(name: str | Path) -> bool:
    """Whether a file name has one of the audio extensions, in any case."""
    return Path(name).suffix.lower() in AUDIO_EXTENSIONS


def write_pcm16(
    path: str | Path,
    signal: torch.Tensor | Iterable[torch.Tensor],
    sample_rate: int,
    gain: float = 1.0,
    block_samples: int = 1 << 20,
    software: str | None = None,
) -> None:
    """Write a mono float signal [time] (or its consecutive blocks, from an iterable) times `gain` as 16-bit PCM,
    block by block (no full-size copy).

    Samples beyond [-1, 1] are clipped and NaN is written as 0: callers that must not clip scale first.
    `software`, if given, is stored in the file's metadata (WAV: the INFO chunk's ISFT), to recognise it later.
    Callers pass a temporary path of `speechsep.output_files`, which names the file once it is complete.
    """
    if isinstance(signal, torch.Tensor):
        signal = torch.split(signal.detach().float().cpu(), block_samples)
    with sf.SoundFile(os.fsencode(path), "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as audio:
        if software:
            audio.software = software
        for block in signal:
            audio.write((block * gain).nan_to_num(0.0).clamp(-1.0, 1.0).numpy())
