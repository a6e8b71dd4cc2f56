"""Dynamic mixing in simulated rooms (WHAMR!): reproducible rooms in WHAMR!'s ranges, reverberant inputs, dry targets."""

from pathlib import Path

import numpy as np
import pyroomacoustics as pra
import pytest
import torch
import torch.multiprocessing

from speechsep.data.dynamic_mixing import DynamicMixingDataset
from speechsep.data.rooms import ShoeboxRooms
from speechsep.training.config import ConfigError
from speechsep.training.preflight import check_rebuilt_mixtures, check_values
from tests.helpers import (
    SAMPLE_RATE,
    make_dataset,
)

# ------------------------------------------------------------------ simulated rooms (WHAMR!)
QUICK_ROOMS = ShoeboxRooms(rt60_s=((0.1, 0.3),))  # WHAMR!'s low reverberation only: short simulations


def reverberant_dataset(tmp_path: Path, **options) -> DynamicMixingDataset:
    dataset = make_dataset(tmp_path, noise=True, rooms="whamr", **options)
    dataset.rooms = QUICK_ROOMS
    return dataset


def test_same_seed_epoch_and_index_give_the_same_reverberant_mixture_and_another_index_another_room(tmp_path):
    first, second = (reverberant_dataset(tmp_path / name, seed=7) for name in ("a", "b"))
    first.set_epoch(2)
    second.set_epoch(2)
    mixture, again = first.draw(3), second.draw(3)
    assert mixture.room == again.room and np.array_equal(mixture.mixture, again.mixture)
    assert np.array_equal(mixture.sources, again.sources) and torch.equal(first[3]["mix_sig"], second[3]["mix_sig"])
    other = first.draw(4).room
    assert other.size != mixture.room.size and other.sources != mixture.room.sources


def test_drawn_rooms_lie_in_whamrs_ranges():
    rng = np.random.default_rng(0)
    rooms = [ShoeboxRooms().draw(rng, num_sources=3) for _ in range(3000)]
    size = np.array([room.size for room in rooms])  # [rooms, 3]
    microphone = np.array([room.microphone for room in rooms])  # [rooms, 3]
    sources = np.array([room.sources for room in rooms])  # [rooms, 3 sources, 3]
    rt60 = np.array([room.rt60 for room in rooms])
    assert (size[:, :2] >= 5).all() and (size[:, :2] <= 10).all()
    assert (size[:, 2] >= 3).all() and (size[:, 2] <= 4).all()
    assert (np.abs(microphone[:, :2] - size[:, :2] / 2) <= 0.2).all()
    assert (microphone[:, 2] >= 0.9).all() and (microphone[:, 2] <= 1.8).all()
    distance = np.linalg.norm(sources[..., :2] - microphone[:, None, :2], axis=-1)
    assert (distance >= 0.66).all() and (distance <= 2.0).all()
    assert (sources[..., 2] >= 0.9).all() and (sources[..., 2] <= 1.8).all()
    assert (rt60 >= 0.1).all() and (rt60 <= 1.0).all()
    # the whole range (its shortest values are out of Sabine's reach in most of these rooms: those are redrawn),
    # and the high level, one draw in three, is the only one above 0.6 s: 2/9 of the draws
    assert rt60.min() < 0.15 and rt60.max() > 0.98 and np.mean(rt60 > 0.6) == pytest.approx(2 / 9, abs=0.03)


def test_targets_are_the_direct_paths_and_the_input_their_reverberant_images_plus_dry_noise(tmp_path):
    dry = make_dataset(tmp_path / "dry", noise=True, seed=3)  # the same draws without a room
    wet = reverberant_dataset(tmp_path / "wet", seed=3)
    speed_of_sound, filter_delay = pra.constants.get("c"), pra.constants.get("frac_delay_length") // 2
    for index in range(4):
        mixture, without_room = wet.draw(index), dry.draw(index)
        np.testing.assert_array_equal(mixture.noise, without_room.noise)  # the noise is not reverberated
        np.testing.assert_allclose(mixture.mixture - mixture.noise, mixture.images.sum(axis=0), atol=1e-6)
        assert not np.allclose(mixture.mixture, mixture.sources.sum(axis=0) + mixture.noise, atol=1e-3)
        assert torch.equal(wet[index]["s2_sig"], torch.from_numpy(mixture.sources[1]))
        for target, image, source, position in zip(
            mixture.sources, mixture.images, without_room.sources, mixture.room.sources
        ):
            # the source delayed by its direct path (and the simulator's filter), at the source's energy
            distance = np.linalg.norm(np.subtract(position, mixture.room.microphone))
            delay = filter_delay + distance / speed_of_sound * SAMPLE_RATE
            assert si_snr(target, delayed(source, delay)) > 25
            assert np.sum(target**2) == pytest.approx(np.sum(source**2), rel=0.05)
            # lined up with the direct sound of its reverberant image, which it is not
            assert int(np.argmax(np.correlate(image, target, "full"))) == len(target) - 1
            assert si_snr(image, target) < 15


def delayed(signal: np.ndarray, delay: float) -> np.ndarray:
    """`signal` delayed by a fractional number of samples (a linear phase), cut to its length."""
    num_bins = 2 * len(signal)
    phase = np.exp(-2j * np.pi * np.fft.rfftfreq(num_bins) * delay)
    return np.fft.irfft(np.fft.rfft(signal, num_bins) * phase, num_bins)[: len(signal)]


def si_snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    projection = np.dot(estimate, reference) / np.dot(reference, reference) * reference
    return 10 * np.log10(np.sum(projection**2) / np.sum((estimate - projection) ** 2))


def test_options_that_rebuild_the_mixture_from_its_targets_are_refused_with_rooms():
    values = {"dynamic_mixing": True, "dm_rooms": "whamr", "use_speedperturb": True, "skip_prep": True}
    with pytest.raises(ConfigError, match="^use_speedperturb take.* but dm_rooms=whamr makes reverberant mixtures"):
        check_rebuilt_mixtures(values, test_only=False)
    check_rebuilt_mixtures({**values, "dm_rooms": None}, test_only=False)
    with pytest.raises(ConfigError, match="^dm_rooms is 'whamr!'; expected null \\(no room\\) or whamr$"):
        check_values({"dm_rooms": "whamr!"})
