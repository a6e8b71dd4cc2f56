"""Single-speaker utterances of the synthetic corpus: eSpeak NG reading random sentences, trimmed and levelled."""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from demo.corpus.espeak import EspeakSynth
from demo.corpus.options import (
    MAX_AMPLITUDE,
    MAX_SYNTHESIS_ATTEMPTS,
    POOL_LOUDNESS,
    STREAM_SPEECH,
    STREAM_VARIATION,
    TRIM_MARGIN_SECONDS,
    TRIM_THRESHOLD_DB,
    UTTERANCE_DURATION_RANGE,
    CorpusOptions,
)
from demo.corpus.sentences import make_sentence
from demo.corpus.voice_variation import add_breath, colour_recording, warp_time
from demo.corpus.voices import SyntheticSpeaker
from speechsep.data.loudness import normalize_loudness
from speechsep.output_files import write_failed

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Single-speaker utterances
# ----------------------------------------------------------------------------------------


def _trim_silence(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut leading and trailing silence, keeping a short margin around the speech."""
    frame = sample_rate // 100
    num_frames = len(waveform) // frame
    if num_frames == 0:
        return waveform
    energy = np.mean(waveform[: num_frames * frame].reshape(num_frames, frame) ** 2, axis=1)
    active = np.flatnonzero(energy > energy.max() * 10 ** (TRIM_THRESHOLD_DB / 10))
    if active.size == 0:  # digital silence
        return waveform
    margin = int(TRIM_MARGIN_SECONDS * sample_rate)
    start = max(0, active[0] * frame - margin)
    stop = min(len(waveform), (active[-1] + 1) * frame + margin)
    return waveform[start:stop]


def _speak_utterance(synth: EspeakSynth, speaker: SyntheticSpeaker, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One sentence of random length in UTTERANCE_DURATION_RANGE, at eSpeak's native rate.

    The number of words is corrected from the measured duration until the speech fits; a
    last attempt that is still too long is cut (with a short fade-out).
    """
    min_duration, max_duration = UTTERANCE_DURATION_RANGE
    target = rng.uniform(min_duration, max_duration)
    num_words = max(1, round(target * speaker.rate / 60))
    for _ in range(MAX_SYNTHESIS_ATTEMPTS):
        text = make_sentence(rng, num_words)
        waveform = synth.synthesize(
            text,
            voice=speaker.voice,
            rate=speaker.rate,
            pitch=speaker.pitch,
            pitch_range=speaker.pitch_range,
            seed=int(rng.integers(2**31)),
        )
        waveform = _trim_silence(waveform, synth.sample_rate)
        duration = len(waveform) / synth.sample_rate
        if min_duration <= duration <= max_duration:
            return waveform, text
        corrected = max(1, round(num_words * target / max(duration, 1e-3)))
        if corrected == num_words:  # rounding stalled: step by one word
            corrected = num_words + 1 if duration < target else max(1, num_words - 1)
        num_words = corrected
    max_length = int(max_duration * synth.sample_rate)
    if len(waveform) > max_length:
        waveform = waveform[:max_length].copy()
        fade = synth.sample_rate // 50
        waveform[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=waveform.dtype)
    return waveform, text


def to_pcm16(waveform: np.ndarray) -> np.ndarray:
    """Float in [-1, 1) to int16, rounding to the nearest step."""
    return np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)


def write_int16_wav(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    """Write int16 samples as a PCM_16 WAV file; a failed write removes its part and raises an OutputError.

    Encoded in memory first and written in place, not through `output_files.write_file`: closing a real file
    makes libsndfile fsync it, and a temporary name plus fsync cost milliseconds per file, where the corpus has
    tens of thousands of them. Its manifest is marked complete only after the last one, so a rerun replaces a
    corpus whose generation failed.
    """
    buffer = io.BytesIO()
    sf.write(buffer, pcm, sample_rate, format="WAV", subtype="PCM_16")
    try:
        path.write_bytes(buffer.getvalue())
    except OSError as err:  # a full disk, a file size limit: one line naming the file, from a worker process too
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise write_failed(path, err) from None


def read_float(path: Path) -> np.ndarray:
    waveform, _ = sf.read(path, dtype="float64")
    return waveform


def utterance_path(root: Path, speaker: SyntheticSpeaker, index: int) -> Path:
    utterance_id = f"{speaker.speaker_id}_{index:04d}"
    return root / "sources" / speaker.split / speaker.speaker_id / f"{utterance_id}.wav"


def vary_utterance(
    waveform: np.ndarray,
    synth_rate: int,
    sample_rate: int,
    speaker: SyntheticSpeaker,
    rng: np.random.Generator,
) -> np.ndarray:
    """eSpeak NG's output at ``synth_rate`` made this speaker's and recorded, at ``sample_rate``.

    The speaker's vocal-tract scale, voice wobble and breath, then resampling, then this recording's colouring
    (demo.corpus.voice_variation).
    """
    waveform = warp_time(waveform.astype(np.float64), synth_rate, speaker.formant_scale, speaker.wobble, rng)
    if speaker.breath_db is not None:
        waveform = add_breath(waveform, synth_rate, speaker.breath_db, rng)
    divisor = math.gcd(sample_rate, synth_rate)
    waveform = resample_poly(waveform, sample_rate // divisor, synth_rate // divisor)
    return colour_recording(waveform, sample_rate, rng)


def synthesize_speakers(
    speakers: Sequence[tuple[int, SyntheticSpeaker]], options: CorpusOptions, root: Path
) -> list[dict]:
    """Write every utterance of a few speakers to the pool; returns their table rows.

    eSpeak NG carries hidden state from one utterance to the next (its pitch-flutter phase),
    so a worker process only ever synthesises one fixed group of speakers, in order, from a
    fresh start: the audio then does not depend on how the work was spread over processes.
    """
    synth = EspeakSynth()
    rows = []
    for speaker_index, speaker in speakers:
        rng = np.random.default_rng([options.seed, STREAM_SPEECH, speaker_index])
        variation_rng = np.random.default_rng([options.seed, STREAM_VARIATION, speaker_index])
        for index in range(options.utts_per_speaker):
            waveform, text = _speak_utterance(synth, speaker, rng)
            waveform = vary_utterance(waveform, synth.sample_rate, options.sample_rate, speaker, variation_rng)
            waveform, _ = normalize_loudness(waveform, options.sample_rate, POOL_LOUDNESS)
            waveform *= min(1.0, MAX_AMPLITUDE / max(np.abs(waveform).max(), 1e-9))
            path = utterance_path(root, speaker, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_int16_wav(path, to_pcm16(waveform), options.sample_rate)
            rows.append(
                dict(
                    utterance_id=path.stem,
                    speaker_id=speaker.speaker_id,
                    split=speaker.split,
                    path=str(path),
                    num_samples=len(waveform),
                    text=text,
                )
            )
    return rows
