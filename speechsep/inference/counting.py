"""Which output tracks of a separator hold a talker: counting talkers after separation, for every model.

A model of K outputs given fewer talkers still writes K tracks. What the extra ones hold depends on the model: one
trained on 1 to K talkers (`talker_counts`) leaves them near silence; one trained on K talkers alone splits a voice
between tracks, so that a phantom track is a quieter copy of a real one, or takes the voice over for a while. Two
tests decide, on each stretch of time separately (a talker who stops does not disappear from the whole file):

- level: a track more than `min_level_db` below the mixture (over the stretch) holds no talker;
- copy: a track that follows a louder talker's track is a copy of it, not a talker of its own. Two measures of
  following, averaged (`copy_score`): the share of the frames both are voiced in where their pitch agrees (two
  people rarely speak at the same pitch at the same moment, and the pieces of one voice always do), and the
  correlation of their log energy envelopes (the pieces of one voice start, stop and pause together; two talkers'
  do not).

The thresholds are calibrated by measurement (`bench/bench_counting.py`, figures in bench/RESULTS.md). A copy's
signal is given back to the track it copies (their sum is the voice); a quiet track's is left out.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

FRAME_S = 0.04  # pitch analysis frames: two periods of a 50 Hz voice
FRAME_HOP_S = 0.01
ENVELOPE_FRAME_S = 0.02  # energy envelope frames
ENVELOPE_HOP_S = 0.005
ENVELOPE_FLOOR_DB = -90.0  # frames where the mixture is further below its loudest are digital silence: left out
MIN_ENVELOPE_FRAMES = 20  # fewer frames where the mixture sounds cannot tell a copy by its envelope
PITCH_RANGE_HZ = (60.0, 400.0)
VOICING = 0.5  # normalised autocorrelation at the period above which a frame is voiced
VOICED_FLOOR_DB = -30.0  # frames further below the track's loudest frame are not analysed
SAME_PITCH_OCTAVES = 0.05  # about 3.5 %: the same voice
RAMP_S = 0.05  # tracks fade over this long where a decision changes between stretches
QUIET_STRETCH = 0.01  # a stretch more than 20 dB below the input's mean power is measured against that instead


class CountingError(ValueError):
    """Counting options that cannot be used."""


@dataclasses.dataclass(frozen=True)
class CountingRule:
    """The thresholds of the two tests and the stretch they are decided on."""

    min_level_db: float = -18.0  # a track further below the mixture holds no talker
    min_copy_score: float = 0.65  # a track whose `copy_score` with a louder talker's reaches it is a copy
    min_shared_frames: int = 20  # fewer frames voiced in both: the pitch cannot tell, the envelopes decide alone
    stretch_s: float = 4.0  # decisions are taken on stretches of about this long

    def __post_init__(self):
        if not (math.isfinite(self.min_level_db) and self.min_level_db < 0):
            raise CountingError(f"min_level_db must be a negative number of dB, got {self.min_level_db}")
        if not (math.isfinite(self.min_copy_score) and 0 < self.min_copy_score <= 1):
            raise CountingError(f"min_copy_score must lie in (0, 1], got {self.min_copy_score}")
        if not (math.isfinite(self.stretch_s) and self.stretch_s >= 1):
            raise CountingError(f"stretch_s must be at least 1 second, got {self.stretch_s}")
        if self.min_shared_frames < 1:
            raise CountingError(f"min_shared_frames must be at least 1, got {self.min_shared_frames}")


@dataclasses.dataclass
class StretchCount:
    """The decision on one stretch: what each output track holds there."""

    start: int  # samples
    end: int
    level_db: list[float]  # each track relative to the mixture over the stretch (or the file's, if louder)
    holds: list[str]  # "talker", "silence" (too quiet) or "copy of <k>" (1-based, another track)
    track_energy: list[float]  # each track's energy over the stretch
    mixture_energy: float

    @property
    def talkers(self) -> int:
        return self.holds.count("talker")

    def routing(self) -> np.ndarray:
        """[K, K]: how much of track k goes to output j over this stretch (a copy goes to the track it copies)."""
        num_tracks = len(self.holds)
        routing = np.zeros((num_tracks, num_tracks), dtype=np.float32)
        for k, held in enumerate(self.holds):
            if held == "talker":
                routing[k, k] = 1
            elif held.startswith("copy of "):
                routing[k, int(held.split()[-1]) - 1] = 1
        return routing


@dataclasses.dataclass
class TalkerCount:
    """What every stretch of one input holds; `talkers`: the outputs that hold a talker in some stretch (a talker who
    stops and another who starts later are two)."""

    stretches: list[StretchCount]
    sample_rate: int

    @property
    def talkers(self) -> int:
        return len(self.tracks)

    @property
    def tracks(self) -> list[int]:
        """The outputs (0-based, in the model's order) that hold a talker in some stretch: the tracks to write."""
        num_tracks = len(self.stretches[0].holds)
        return [k for k in range(num_tracks) if any(s.holds[k] == "talker" for s in self.stretches)]

    def level_db(self) -> list[float]:
        """Each track's level relative to the mixture over the whole input (dB; -inf for silence)."""
        energy = np.sum([stretch.track_energy for stretch in self.stretches], axis=0)
        mixture = max(sum(stretch.mixture_energy for stretch in self.stretches), 1e-20)
        with np.errstate(divide="ignore"):
            return (10 * np.log10(energy / mixture)).tolist()

    def record(self) -> dict:
        """The count as a JSON-ready dict: talkers, each track's level, and each stretch's decision."""
        return {
            "talkers": self.talkers,
            "most_at_once": max(s.talkers for s in self.stretches),
            "level_db": [_rounded(value) for value in self.level_db()],
            "stretches": [
                {
                    "start_s": round(s.start / self.sample_rate, 3),
                    "end_s": round(s.end / self.sample_rate, 3),
                    "talkers": s.talkers,
                    "level_db": [_rounded(value) for value in s.level_db],
                    "holds": s.holds,
                }
                for s in self.stretches
            ],
        }


def _rounded(value: float) -> float | None:
    return round(value, 1) if math.isfinite(value) else None  # JSON has no -inf: null is silence


def pitch_track(signal: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Pitch (Hz) and voicing of every 10 ms frame of `signal` [time]: the autocorrelation's highest peak within
    `PITCH_RANGE_HZ`; voiced where that peak exceeds `VOICING` of the frame's energy and the frame is within
    `VOICED_FLOOR_DB` of the signal's loudest. -> (pitch [frames], voiced [frames] bool)"""
    frame, hop = round(FRAME_S * sample_rate), round(FRAME_HOP_S * sample_rate)
    num_frames = 1 + max(0, (len(signal) - frame) // hop)
    if len(signal) < frame:
        signal = np.pad(signal, (0, frame - len(signal)))
    frames = np.lib.stride_tricks.sliding_window_view(signal.astype(np.float64), frame)[::hop][:num_frames]
    frames = frames - frames.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(frames, 2 * frame)
    autocorrelation = np.fft.irfft(np.abs(spectrum) ** 2)[:, :frame]
    energy = autocorrelation[:, 0]
    shortest, longest = (min(frame - 1, max(1, round(sample_rate / hz))) for hz in reversed(PITCH_RANGE_HZ))
    lags = np.arange(shortest, longest + 1)
    best = shortest + np.argmax(autocorrelation[:, lags], axis=1)  # biased: a multiple of the period scores lower
    unbiased = autocorrelation[np.arange(num_frames), best] * frame / (frame - best)  # fewer products at longer lags
    peak = unbiased / np.maximum(energy, 1e-20)
    loud = energy > energy.max() * 10 ** (VOICED_FLOOR_DB / 10) if energy.max() > 0 else np.zeros_like(peak, bool)
    return sample_rate / best, (peak > VOICING) & loud


def same_pitch_fraction(
    pitch: np.ndarray, voiced: np.ndarray, other_pitch: np.ndarray, other_voiced: np.ndarray, min_frames: int
) -> float:
    """Of the frames where two tracks are both voiced (`pitch_track` of each), the fraction with the same pitch; NaN
    where fewer than `min_frames` are (it cannot tell)."""
    both = voiced & other_voiced
    if both.sum() < min_frames:
        return math.nan
    ratio = np.abs(np.log2(pitch[both] / other_pitch[both]))
    return float(np.mean(ratio < SAME_PITCH_OCTAVES))


def frame_energies(signals: np.ndarray, sample_rate: int) -> np.ndarray:
    """Energy (variance: DC is no talker) of every `ENVELOPE_FRAME_S` frame, `ENVELOPE_HOP_S` apart, of signals
    [time, K]: [K, frames]."""
    frame, hop = max(1, round(ENVELOPE_FRAME_S * sample_rate)), max(1, round(ENVELOPE_HOP_S * sample_rate))
    if len(signals) < frame:
        signals = np.pad(signals, ((0, frame - len(signals)), (0, 0)))
    frames = np.lib.stride_tricks.sliding_window_view(signals.T.astype(np.float64), frame, axis=1)[:, ::hop]
    return frames.var(axis=-1)


def envelope_correlation(track_energy: np.ndarray, mixture_energy: np.ndarray, first: int, second: int) -> float:
    """Correlation (0 where negative) of the log energy envelopes of tracks `first` and `second` (`frame_energies`
    [K, frames]) over the frames where the mixture (`mixture_energy` [frames]) sounds: digital silence, where every
    track is silent, would make any two tracks alike. NaN where fewer than `MIN_ENVELOPE_FRAMES` frames sound or a
    track's envelope is flat there: it cannot tell."""
    floor = mixture_energy.max() * 10 ** (ENVELOPE_FLOOR_DB / 10)
    sounding = mixture_energy > floor
    if sounding.sum() < MIN_ENVELOPE_FRAMES:
        return math.nan
    a, b = (np.log10(np.maximum(track_energy[k, sounding], floor)) for k in (first, second))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return max(0.0, float(np.corrcoef(a, b)[0, 1]))


def copy_score(pitch_agreement: float, envelope_agreement: float) -> float:
    """How alike two tracks are, 0 to 1: the mean of their `same_pitch_fraction` and `envelope_correlation`, either
    alone where the other cannot tell (NaN); NaN where neither can."""
    known = [value for value in (pitch_agreement, envelope_agreement) if not math.isnan(value)]
    return sum(known) / len(known) if known else math.nan


def decide_stretch(
    est_sources: np.ndarray,
    mixture: np.ndarray,
    start: int,
    end: int,
    sample_rate: int,
    rule: CountingRule,
    file_power: float = 0.0,
) -> StretchCount:
    """What each track holds over samples [start, end) (see `StretchCount.holds`), and their levels: relative to the
    stretch's mixture, or to `file_power` (the whole input's mean square, times `QUIET_STRETCH`) where that is
    louder, so that a stretch of near-silence does not make its noise a talker. Only the tracks loud enough to hold a
    talker are analysed further. est_sources [time, K], mixture [time]: the whole input."""
    estimates, mixture = est_sources[start:end], mixture[start:end]
    track_variance = np.var(estimates, axis=0, dtype=np.float64)  # DC is no talker
    mixture_variance = float(np.var(mixture, dtype=np.float64))
    power = max(mixture_variance, QUIET_STRETCH * file_power, 1e-20)
    with np.errstate(divide="ignore"):
        level_db = (10 * np.log10(track_variance / power)).tolist()
    audible = [k for k in np.argsort(-np.array(level_db), kind="stable") if level_db[k] >= rule.min_level_db]
    pitch = {k: pitch_track(estimates[:, k], sample_rate) for k in audible}  # (pitch, voiced) of each
    track_energy, mixture_energy = (
        frame_energies(estimates, sample_rate),
        frame_energies(mixture[:, None], sample_rate)[0],
    )
    holds = ["silence"] * estimates.shape[1]
    talkers: list[int] = []
    for k in audible:
        scores = {
            j: copy_score(
                same_pitch_fraction(*pitch[j], *pitch[k], rule.min_shared_frames),
                envelope_correlation(track_energy, mixture_energy, j, k),
            )
            for j in talkers
        }
        copied = [j for j, score in scores.items() if score >= rule.min_copy_score]  # NaN: cannot tell, no copy
        if copied:
            holds[k] = f"copy of {max(copied, key=scores.get) + 1}"
        else:
            holds[k] = "talker"
            talkers.append(int(k))
    length = end - start
    return StretchCount(start, end, level_db, holds, (track_variance * length).tolist(), mixture_variance * length)


def stretch_bounds(num_samples: int, sample_rate: int, stretch_s: float) -> list[tuple[int, int]]:
    """Stretches of about `stretch_s` seconds covering `num_samples`, all of the same length (a short input: one)."""
    count = max(1, round(num_samples / (stretch_s * sample_rate)))
    edges = np.linspace(0, num_samples, count + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def count_talkers(
    est_sources: torch.Tensor | np.ndarray,
    mixture: torch.Tensor | np.ndarray,
    sample_rate: int,
    rule: CountingRule | None = None,
) -> TalkerCount:
    """Decide, stretch by stretch, which tracks hold a talker. est_sources [time, K] at the mixture's level (as
    separate.py writes them: `match_mixture_level`) and mixture [time], at the model's rate."""
    rule = rule or CountingRule()
    est_sources, mixture = _numpy(est_sources), _numpy(mixture)
    file_power = float(np.var(mixture, dtype=np.float64))
    stretches = [
        decide_stretch(est_sources, mixture, start, end, sample_rate, rule, file_power)
        for start, end in stretch_bounds(len(mixture), sample_rate, rule.stretch_s)
    ]
    return TalkerCount(stretches, sample_rate)


def talker_tracks(est_sources: torch.Tensor, count: TalkerCount) -> torch.Tensor:
    """The tracks to write: [time, number of `count.tracks`]. In each stretch, a copy is added to the track it copies
    and a silent track's signal is left out; decisions that change between stretches fade over `RAMP_S`."""
    ramp = max(1, round(RAMP_S * count.sample_rate))
    routings = [torch.from_numpy(stretch.routing()) for stretch in count.stretches]
    output = torch.empty_like(est_sources)
    for index, stretch in enumerate(count.stretches):
        output[stretch.start : stretch.end] = est_sources[stretch.start : stretch.end] @ routings[index]
    for index, stretch in enumerate(count.stretches[1:], start=1):  # blend across each boundary
        if torch.equal(routings[index - 1], routings[index]):
            continue
        start, end = max(0, stretch.start - ramp // 2), min(len(est_sources), stretch.start + ramp // 2)
        fade = torch.linspace(0, 1, end - start).unsqueeze(-1)  # [samples, 1]
        part = est_sources[start:end]
        output[start:end] = (1 - fade) * (part @ routings[index - 1]) + fade * (part @ routings[index])
    return output[:, count.tracks]


def _numpy(signal: torch.Tensor | np.ndarray) -> np.ndarray:
    return signal.detach().float().cpu().numpy() if isinstance(signal, torch.Tensor) else np.asarray(signal)
