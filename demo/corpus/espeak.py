"""eSpeak NG text-to-speech through ctypes, for an offline synthetic speech corpus.

The shared library and its voice data come from the PyPI package ``espeakng-loader``, so no
system install is needed. eSpeak NG keeps global state (one voice, one callback), so each
process loads and initialises the library once, lazily, on its first synthesis: a
:class:`EspeakSynth` can be created in a parent process and used from multiprocessing workers.

Example
-------
>>> synth = EspeakSynth()
>>> waveform = synth.synthesize("Hello world.", voice="en-us+m3", pitch=40)
>>> waveform.dtype, synth.sample_rate
(dtype('float32'), 22050)
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import espeakng_loader
import numpy as np

__all__ = ["EspeakSynth", "available_languages", "available_variants"]

# Constants from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_INITIALIZE_DONT_EXIT = 0x8000
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
_BUFFER_MILLISECONDS = 1000  # audio handed to the callback per call: fewer, larger chunks

# int callback(short *wav, int num_samples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

# One loaded library per process: the key is the pid, so a forked child re-initialises.
_PROCESS_STATE: dict[int, _EspeakLibrary] = {}
_PROCESS_LOCK = threading.Lock()


def _data_path() -> Path:
    return Path(espeakng_loader.get_data_path())


def available_variants() -> list[str]:
    """Names of the voice variants shipped with the data (``m3``, ``f2``, ``klatt4``, ...)."""
    return sorted(path.name for path in (_data_path() / "voices" / "!v").iterdir())


def available_languages() -> list[str]:
    """Language voice names shipped with the data, lower-case (``en-us``, ``de``, ...)."""
    lang_dir = _data_path() / "lang"
    return sorted(path.name.lower() for path in lang_dir.rglob("*") if path.is_file())


class _EspeakLibrary:
    """The library handle of this process, with the callback that collects samples."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            _BUFFER_MILLISECONDS,
            os.fsencode(_data_path()),
            _INITIALIZE_DONT_EXIT,
        )
        if sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data path {_data_path()}")
        self.sample_rate = int(sample_rate)
        self.chunks: list[np.ndarray] = []
        # Keep a reference: ctypes callbacks must outlive every call that may use them.
        self._callback = _SYNTH_CALLBACK(self._collect)
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = carry on synthesising

    def synthesize(self, text: str, voice: str, params: dict[int, int], seed: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"eSpeak NG has no voice {voice!r}: expected language[+variant]")
        for param, value in params.items():
            self.lib.espeak_SetParameter(param, int(value), 0)
        # eSpeak's pitch flutter and noise sources are pseudo-random: reseeding them before
        # every utterance makes it independent of what this process synthesised before.
        self.lib.espeak_ng_SetRandSeed(seed)
        encoded = text.encode("utf-8")
        self.chunks = []
        status = self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} on {text!r}")
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        self.chunks = []
        return samples


def _process_library() -> _EspeakLibrary:
    with _PROCESS_LOCK:
        library = _PROCESS_STATE.get(os.getpid())
        if library is None:
            library = _PROCESS_STATE[os.getpid()] = _EspeakLibrary()
        return library


class EspeakSynth:
    """Synthesise text with eSpeak NG at its native rate (22050 Hz), as float32 in [-1, 1].

    Cheap to create and to pickle: the library is loaded on first use in each process.
    Calls are serialised within a process (eSpeak NG is not re-entrant).
    """

    native_sample_rate = 22050

    @property
    def sample_rate(self) -> int:
        """The rate of the returned waveforms (what eSpeak NG reports, normally 22050 Hz)."""
        return _process_library().sample_rate

    def synthesize(
        self,
        text: str,
        voice: str = "en-us",
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        volume: int = 100,
        word_gap: int = 0,
        seed: int = 0,
    ) -> np.ndarray:
        """Speak ``text`` and return the waveform, ``[time]`` float32 at :attr:`sample_rate`.

        Arguments
        ---------
        text : the words to speak (UTF-8; punctuation shapes the intonation).
        voice : ``language[+variant]`` such as ``"en-us+m3"`` or ``"de+f2"``.
        rate : speaking rate in words per minute (eSpeak accepts 80..450).
        pitch : base pitch, 0..100 (50 = the voice's own).
        pitch_range : intonation range, 0..100 (0 = monotone, 50 = normal).
        volume : amplitude, 0..200 (100 = normal).
        word_gap : extra pause between words, in units of 10 ms.
        seed : seeds eSpeak's noise generators (breathy voices).

        eSpeak NG also keeps hidden state between utterances (its pitch-flutter phase), so
        the samples are bit-identical only for the same sequence of calls in a fresh process.
        """
        params = {
            _PARAM_RATE: rate,
            _PARAM_PITCH: pitch,
            _PARAM_RANGE: pitch_range,
            _PARAM_VOLUME: volume,
            _PARAM_WORDGAP: word_gap,
        }
        library = _process_library()
        with _PROCESS_LOCK:
            samples = library.synthesize(text, voice, params, seed)
        return samples.astype(np.float32) / 32768.0
