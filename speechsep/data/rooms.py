"""Simulated rooms for dynamic mixing: WHAMR!'s reverberation, drawn from each mixture's RNG.

Every training mixture gets its own shoebox room, simulated with pyroomacoustics' image-source method. The
input is the sum of the sources' reverberant images, the targets their direct paths (WHAMR!'s `s*_anechoic`),
so a model trained on them dereverberates as it separates, as WHAMR!'s published results are scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve

Point = tuple[float, float, float]  # metres


@dataclass(frozen=True)
class Room:
    """One shoebox room: its size (length, width, height), RT60 in seconds, the microphone and one point per source."""

    size: Point
    rt60: float
    microphone: Point
    sources: tuple[Point, ...]


@dataclass(frozen=True)
class ShoeboxRooms:
    """Shoebox rooms drawn within ranges; the defaults are the rooms of WHAMR! (Maciejewski et al., "WHAMR!: Noisy and Reverberant Single-Channel Speech Separation",
    ICASSP 2020; the ranges of its scripts' `sample_reverb.py`), every value drawn uniformly:

    - length and width in [5, 10] m, height in [3, 4] m;
    - the microphone within 0.2 m of the room's centre along the length and the width, 0.9 to 1.8 m high;
    - each source 0.66 to 2 m from the microphone horizontally, in any direction, 0.9 to 1.8 m high;
    - RT60 in [0.1, 0.3], [0.2, 0.6] or [0.4, 1.0] s (WHAMR!'s low, medium and high levels; one of the three,
      with equal probability).

    WHAMR!'s channel is the left one of a microphone pair about 16 cm wide around that point; here one microphone
    is at the point. A room too large for its RT60 (Sabine's walls would absorb more than all the energy) is drawn
    again.
    """

    length_m: tuple[float, float] = (5.0, 10.0)
    width_m: tuple[float, float] = (5.0, 10.0)
    height_m: tuple[float, float] = (3.0, 4.0)
    microphone_offset_m: float = 0.2
    microphone_height_m: tuple[float, float] = (0.9, 1.8)
    source_distance_m: tuple[float, float] = (0.66, 2.0)
    source_height_m: tuple[float, float] = (0.9, 1.8)
    rt60_s: tuple[tuple[float, float], ...] = ((0.1, 0.3), (0.2, 0.6), (0.4, 1.0))

    def draw(self, rng: np.random.Generator, num_sources: int) -> Room:
        """A room with `num_sources` source positions, from `rng` alone."""
        while True:
            room = self._draw_once(rng, num_sources)
            if _sabine(room) is not None:
                return room

    def _draw_once(self, rng: np.random.Generator, num_sources: int) -> Room:
        size = (rng.uniform(*self.length_m), rng.uniform(*self.width_m), rng.uniform(*self.height_m))
        offset = self.microphone_offset_m
        microphone = (
            size[0] / 2 + rng.uniform(-offset, offset),
            size[1] / 2 + rng.uniform(-offset, offset),
            rng.uniform(*self.microphone_height_m),
        )
        sources = []
        for _ in range(num_sources):
            distance, angle = rng.uniform(*self.source_distance_m), rng.uniform(0.0, 2 * math.pi)
            sources.append(
                (
                    microphone[0] + distance * math.cos(angle),
                    microphone[1] + distance * math.sin(angle),
                    rng.uniform(*self.source_height_m),
                )
            )
        rt60 = rng.uniform(*self.rt60_s[rng.integers(len(self.rt60_s))])
        return Room(_point(size), float(rt60), _point(microphone), tuple(map(_point, sources)))


def _point(values) -> Point:
    return tuple(float(value) for value in values)


ROOM_DISTRIBUTIONS = {"whamr": ShoeboxRooms}


def _sabine(room: Room) -> tuple[float, int] | None:
    """The walls' energy absorption and the image-source order that reach RT60 (pyroomacoustics' inverse
    Sabine), or None where no absorption can."""
    import pyroomacoustics as pra  # here, not at the top: its import costs seconds at every start of train.py

    try:
        return pra.inverse_sabine(room.rt60, room.size)
    except ValueError:
        return None


def impulse_responses(room: Room, sample_rate: int, reflections: bool) -> np.ndarray:
    """Impulse responses [num_sources, taps] from each source to the microphone: all reflections up to RT60
    (cut there, as WHAMR!'s scripts do), or the direct path alone."""
    import pyroomacoustics as pra

    if reflections:
        absorption, max_order = _sabine(room)
        shoebox = pra.ShoeBox(room.size, fs=sample_rate, materials=pra.Material(absorption), max_order=max_order)
    else:
        shoebox = pra.ShoeBox(room.size, fs=sample_rate, max_order=0)
    for source in room.sources:
        shoebox.add_source(source)
    shoebox.add_microphone(room.microphone)
    shoebox.compute_rir()
    responses = shoebox.rir[0]  # of the one microphone, per source
    taps = math.ceil(room.rt60 * sample_rate) if reflections else max(map(len, responses))
    stacked = np.zeros((len(responses), taps))
    for row, response in zip(stacked, responses):
        row[: min(taps, len(response))] = response[:taps]
    return stacked


def room_images(room: Room, sources: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The sources [num_sources, time] as the microphone hears them in `room`: (direct paths, reverberant images),
    each [num_sources, time] float32.

    As WHAMR!'s scripts make `s*_anechoic` and `s*_reverb`: both through the same room, so the direct path is delayed
    as the reverberant image's first arrival and the targets line up with the input; both scaled so that the direct
    path keeps the source's energy; both cut to the sources' length.
    """
    num_samples = sources.shape[1]
    direct = fftconvolve(sources, impulse_responses(room, sample_rate, reflections=False), axes=1)
    reverberant = fftconvolve(sources, impulse_responses(room, sample_rate, reflections=True), axes=1)
    source_energy = np.sum(np.square(sources, dtype=np.float64), axis=1)
    direct_energy = np.sum(np.square(direct), axis=1)
    safe_energy = np.where(direct_energy > 0, direct_energy, 1.0)
    scale = np.where(direct_energy > 0, np.sqrt(source_energy / safe_energy), 1.0)[:, None]  # silent sources: 1
    return (
        (direct[:, :num_samples] * scale).astype(np.float32),
        (reverberant[:, :num_samples] * scale).astype(np.float32),
    )
