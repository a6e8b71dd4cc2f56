"""Specification of dynamic mixing (speechsep.data.dynamic_mixing), on tiny numpy-made pools."""

import os
from pathlib import Path

import numpy as np
import pyloudnorm
import pyroomacoustics as pra
import pytest
import soundfile as sf
import torch
import torch.distributed as dist
import torch.multiprocessing
from speechbrain.dataio.batch import PaddedBatch
from torch.utils.data import DataLoader, DistributedSampler

import train
from speechsep.data import source_pool
from speechsep.data.dynamic_mixing import DynamicMixingDataset, LibriMixLevels, Wsj0Levels, dynamic_mixing_dataset
from speechsep.data.rooms import ShoeboxRooms
from speechsep.data.source_pool import AudioIndex, PoolError, SourcePool
from speechsep.training import experiment
from speechsep.training.config import ConfigError
from speechsep.training.preflight import check_rebuilt_mixtures, check_values
from tests.corpus_trees import make_wsj0mix
from tests.helpers import TINY_CONVTASNET, flac_without_length
from tests.speech import speech_like

SAMPLE_RATE = 8000
SEGMENT_LEN = 4000  # 0.5 s
SPEAKER_F0S = [150.0, 200.0, 250.0, 300.0, 350.0, 400.0]  # every speaker is recognisable by its pitch


# ------------------------------------------------------------------ tiny pools
def voice(f0: float, seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like audio (tests/speech.py) at a steady pitch `f0`, voiced throughout, at an RMS of 0.1."""
    signal = speech_like(int(seconds * sample_rate), sample_rate, np.random.default_rng(seed), f0, 0.0, pauses=False)
    return (0.1 * signal).astype(np.float32)


def librispeech_name(speaker: int, utterance: int) -> str:
    return f"{100 + speaker}/{2000 + speaker}/{100 + speaker}-{2000 + speaker}-{utterance:04d}.flac"


def wsj0_name(speaker: int, utterance: int) -> str:
    return f"01{speaker}/01{speaker}c02{utterance:02d}.wav"


def speaker_folders_name(speaker: int, utterance: int) -> str:
    return f"spk{speaker:02d}/spk{speaker:02d}_{utterance:04d}.wav"


def write_pool(
    root: Path,
    name=speaker_folders_name,
    num_speakers: int = 5,
    num_utterances: int = 3,
    seconds: float = 1.0,
    sample_rate: int = SAMPLE_RATE,
    silent: bool = False,
) -> Path:
    for speaker in range(num_speakers):
        for utterance in range(num_utterances):
            path = root / name(speaker, utterance)
            path.parent.mkdir(parents=True, exist_ok=True)
            seed = 100 * speaker + utterance
            audio = voice(SPEAKER_F0S[speaker], seconds, seed, sample_rate)
            sf.write(path, np.zeros_like(audio) if silent else audio, sample_rate)
    return root


def write_noise(root: Path, seconds: float = 2.0, num_files: int = 2) -> Path:
    root.mkdir(parents=True)
    for number in range(num_files):
        noise = 0.05 * np.random.default_rng(number).standard_normal(int(seconds * SAMPLE_RATE))
        sf.write(root / f"noise_{number}.wav", noise.astype(np.float32), SAMPLE_RATE)
    return root


def make_dataset(tmp_path: Path, noise: bool = False, pool_options=None, **options) -> DynamicMixingDataset:
    settings = dict(num_spks=2, segment_len=SEGMENT_LEN, epoch_len=8, level_scheme="wsj0")
    settings.update(options)
    return dynamic_mixing_dataset(
        write_pool(tmp_path / "sources", **(pool_options or {})),
        sample_rate=SAMPLE_RATE,
        noise_folder=write_noise(tmp_path / "noise") if noise else None,
        **settings,
    )


def source_signals(example: dict) -> list[torch.Tensor]:
    return [example[f"s{number}_sig"] for number in range(1, 4) if f"s{number}_sig" in example]


def pitch_of(signal: torch.Tensor) -> float:
    """The fundamental frequency of a steady voice: the shortest lag within 120-450 Hz where the
    autocorrelation peaks at 90 % of its highest (multiples of the period peak as high)."""
    samples = signal.double().numpy()
    autocorrelation = np.correlate(samples, samples, mode="full")[len(samples) - 1 :]
    shortest, longest = int(SAMPLE_RATE / 450), int(SAMPLE_RATE / 120)
    window = autocorrelation[shortest - 1 : longest + 2]
    peaks = [
        lag
        for lag in range(1, len(window) - 1)
        if window[lag - 1] <= window[lag] >= window[lag + 1] and window[lag] >= 0.9 * window[1:-1].max()
    ]
    return SAMPLE_RATE / (shortest - 1 + peaks[0])


def loudness(signal: torch.Tensor) -> float:
    return pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(signal.double().numpy())


def mean_abs_db(signal: torch.Tensor) -> float:
    return 20 * np.log10(signal.abs().mean().item())


# ------------------------------------------------------------------ the mixtures
@pytest.mark.parametrize("noise", [False, True], ids=["clean", "noisy"])
def test_mixture_is_exactly_the_sum_of_sources_and_noise(tmp_path, noise):
    dataset = make_dataset(tmp_path, noise=noise, num_spks=3, speed_perturb=[95, 100, 105])
    for example in dataset:
        expected = example["s1_sig"] + example["s2_sig"] + example["s3_sig"]
        if noise:
            expected = expected + example["noise_sig"]
        assert torch.equal(example["mix_sig"], expected)


def test_speakers_in_a_mixture_are_distinct(tmp_path):
    dataset = make_dataset(tmp_path, num_spks=3, epoch_len=20)
    for example in dataset:
        pitches = [pitch_of(source) for source in source_signals(example)]
        assert all(min(abs(pitch - f0) for f0 in SPEAKER_F0S) < 5 for pitch in pitches)
        assert len({round(pitch, -1) for pitch in pitches}) == 3


def test_every_signal_has_segment_len_samples(tmp_path):
    # utterances and noise files both shorter and longer than the segment, speed perturbation on
    dataset = make_dataset(
        tmp_path, noise=True, segment_len=12000, speed_perturb=[90, 110], pool_options={"seconds": 1.3}
    )
    for example in dataset:
        assert {name: signal.shape for name, signal in example.items() if name != "id"} == {
            "mix_sig": (12000,),
            "s1_sig": (12000,),
            "s2_sig": (12000,),
            "noise_sig": (12000,),
        }
        assert all(signal.dtype == torch.float32 for name, signal in example.items() if name != "id")


def test_index_past_the_epoch_raises_index_error(tmp_path):
    dataset = make_dataset(tmp_path, epoch_len=4)
    with pytest.raises(IndexError):
        dataset[4]


# ------------------------------------------------------------------ levels
def test_librimix_sources_are_within_the_target_loudness_range(tmp_path):
    dataset = make_dataset(tmp_path, level_scheme="librimix", segment_len=SAMPLE_RATE, pool_options={"seconds": 2})
    for example in dataset:
        assert example["mix_sig"].abs().max() < 0.9  # no peak scaling, so targets are kept as drawn
        for source in source_signals(example):
            assert -33.01 <= loudness(source) <= -24.99


def test_librimix_noise_is_within_the_target_loudness_range(tmp_path):
    dataset = make_dataset(
        tmp_path, noise=True, level_scheme="librimix", segment_len=SAMPLE_RATE, pool_options={"seconds": 2}
    )
    for example in dataset:
        assert example["mix_sig"].abs().max() < 0.9
        assert -38.01 <= loudness(example["noise_sig"]) <= -29.99


def test_wsj0_levels_follow_the_upstream_distributions():
    rng = np.random.default_rng(0)
    sources = [np.full(100, 0.5, np.float32), np.full(100, 0.01, np.float32)]  # -6 dB and -40 dB
    noise = np.full(100, 0.2, np.float32)
    first, second, speech_to_noise = [], [], []
    for _ in range(4000):
        gains, noise_gain = Wsj0Levels().gains(rng, sources, noise)
        levels = [20 * np.log10(0.5 * gains[0]), 20 * np.log10(0.01 * gains[1])]
        first.append(levels[0])
        second.append(levels[1])
        speech_to_noise.append(max(levels) - 20 * np.log10(0.2 * noise_gain))
    first, second = np.array(first), np.array(second)
    assert first.min() >= -45 and second.max() <= 0
    assert abs(first.mean() + 27.43) < 0.15 and abs(first.std() - 2.57) < 0.15
    assert abs((second - first).mean() + 2.51) < 0.15 and abs((second - first).std() - 2.66) < 0.15
    assert min(speech_to_noise) >= -6 and max(speech_to_noise) <= 3


def test_wsj0_dataset_sources_get_the_scheme_levels(tmp_path):
    dataset = make_dataset(tmp_path, epoch_len=20, pool_options={"seconds": 1})
    first_levels = [mean_abs_db(example["s1_sig"]) for example in dataset]
    assert all(-27.43 - 4 * 2.57 < level < -27.43 + 4 * 2.57 for level in first_levels)


def test_loud_mixtures_are_scaled_down_to_a_peak_of_0_9(tmp_path):
    dataset = make_dataset(tmp_path, noise=True, level_scheme="librimix")
    dataset.levels = LibriMixLevels(SAMPLE_RATE, speech_lufs=(-3.0, -2.0))
    for example in dataset:
        signals = [example["mix_sig"], example["noise_sig"], *source_signals(example)]
        assert max(signal.abs().max().item() for signal in signals) == pytest.approx(0.9, abs=1e-6)
        assert torch.equal(example["mix_sig"], example["s1_sig"] + example["s2_sig"] + example["noise_sig"])


@pytest.mark.parametrize("level_scheme", ["wsj0", "librimix"])
def test_very_short_utterances_give_finite_mixtures(tmp_path, level_scheme):
    dataset = make_dataset(
        tmp_path,
        noise=True,
        level_scheme=level_scheme,
        speed_perturb=[95, 105],
        pool_options={"seconds": 0.1},
    )
    for example in dataset:
        signals = [example["mix_sig"], example["noise_sig"], *source_signals(example)]
        assert all(torch.isfinite(signal).all() for signal in signals)
        assert example["s1_sig"].abs().max() > 0  # short, but not silenced


@pytest.mark.parametrize("level_scheme", ["wsj0", "librimix"])
def test_silent_utterances_stay_silent_and_finite(tmp_path, level_scheme):
    """Silent crops keep their level (indexing leaves out all-silent files, so the pool is built by hand)."""
    folder = write_pool(tmp_path / "sources", silent=True)
    rel_paths = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.wav"))
    frames = np.full(len(rel_paths), SAMPLE_RATE, dtype=np.int64)
    files = AudioIndex(str(folder), rel_paths, [str(folder / rel_path) for rel_path in rel_paths], frames)
    pool = SourcePool(files, [rel_path.split("/")[0] for rel_path in rel_paths])
    noise = AudioIndex.from_folder(write_noise(tmp_path / "noise"), SAMPLE_RATE)
    dataset = DynamicMixingDataset(
        pool, 2, SAMPLE_RATE, SEGMENT_LEN, epoch_len=8, level_scheme=level_scheme, noise_files=noise
    )
    for example in dataset:
        assert torch.isfinite(example["mix_sig"]).all()
        assert all(torch.equal(source, torch.zeros(SEGMENT_LEN)) for source in source_signals(example))


def test_librimix_segment_shorter_than_the_meter_block_gives_finite_levels(tmp_path):
    dataset = make_dataset(tmp_path, level_scheme="librimix", segment_len=1600)  # 0.2 s < 0.4 s
    for example in dataset:
        for source in source_signals(example):
            assert torch.isfinite(source).all() and source.abs().max() > 0


# ------------------------------------------------------------------ reproducibility, ranks and workers
def test_same_seed_gives_the_same_mixtures(tmp_path):
    first = make_dataset(tmp_path / "a", noise=True, speed_perturb=[95, 105], seed=7)
    second = make_dataset(tmp_path / "b", noise=True, speed_perturb=[95, 105], seed=7)
    for one, other in zip(first, second):
        assert one["id"] == other["id"] and torch.equal(one["mix_sig"], other["mix_sig"])


def test_different_seed_gives_different_mixtures(tmp_path):
    first = make_dataset(tmp_path / "a", seed=1)
    second = make_dataset(tmp_path / "b", seed=2)
    assert not any(torch.equal(one["mix_sig"], other["mix_sig"]) for one, other in zip(first, second))


def test_new_epoch_gives_new_mixtures(tmp_path):
    dataset = make_dataset(tmp_path)
    dataset.set_epoch(1)
    epoch_1 = [example["mix_sig"] for example in dataset]
    dataset.set_epoch(2)
    epoch_2 = [example["mix_sig"] for example in dataset]
    assert dataset[0]["id"] == "dm_e2_0"
    assert not any(torch.equal(one, other) for one in epoch_1 for other in epoch_2)


def test_distributed_sampler_gives_ranks_different_mixtures(tmp_path):
    dataset = make_dataset(tmp_path, epoch_len=10)
    mixtures = {
        rank: [dataset[i]["mix_sig"] for i in DistributedSampler(dataset, num_replicas=2, rank=rank, seed=3)]
        for rank in (0, 1)
    }
    assert not any(torch.equal(one, other) for one in mixtures[0] for other in mixtures[1])


def draw_on_rank(rank: int, dataset: DynamicMixingDataset, out_dir: Path) -> None:
    """One rank of a 2-process gloo run: the mixtures its DistributedSampler hands it."""
    dist.init_process_group("gloo", init_method=f"file://{out_dir / 'rendezvous'}", rank=rank, world_size=2)
    try:
        sampler = DistributedSampler(dataset)  # rank and world size from the process group
        loader = DataLoader(dataset, batch_size=1, sampler=sampler, collate_fn=PaddedBatch)
        drawn = {batch.id[0]: batch.mix_sig.data[0] for batch in loader}
        torch.save(drawn, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gloo_ranks_get_different_mixtures(tmp_path):
    dataset = make_dataset(tmp_path, epoch_len=8)
    # spawn, as torchrun's ranks are fresh processes: a fork of a busy test process once lost a rank's connection
    torch.multiprocessing.start_processes(draw_on_rank, args=(dataset, tmp_path), nprocs=2, start_method="spawn")
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    assert len(rank0) == len(rank1) == 4 and not set(rank0) & set(rank1)
    assert not any(torch.equal(one, other) for one in rank0.values() for other in rank1.values())


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loader_workers_give_the_same_mixtures_as_the_main_process(tmp_path, context):
    dataset = make_dataset(tmp_path, noise=True, level_scheme="librimix", speed_perturb=[95, 100, 105])
    dataset.set_epoch(3)  # set before the workers start, as Brain.on_stage_start does

    def batches(**workers):
        return list(DataLoader(dataset, batch_size=2, collate_fn=PaddedBatch, **workers))

    in_main = batches()
    in_workers = batches(num_workers=2, multiprocessing_context=context)
    assert [batch.id for batch in in_workers] == [batch.id for batch in in_main]
    assert in_main[0].id[0] == "dm_e3_0"
    for one, other in zip(in_main, in_workers):
        for key in ("mix_sig", "s1_sig", "s2_sig", "noise_sig"):
            assert torch.equal(getattr(one, key).data, getattr(other, key).data)


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


# ------------------------------------------------------------------ pools: layouts and caches
def assert_same_index(index: AudioIndex, other: AudioIndex) -> None:
    assert index.paths == other.paths and np.array_equal(index.num_frames, other.num_frames)


@pytest.mark.parametrize(
    "name, layout, first_speaker",
    [
        (librispeech_name, "LibriSpeech", "100"),
        (wsj0_name, "WSJ0", "010"),
        (speaker_folders_name, "speaker folders", "spk00"),
    ],
)
def test_layout_and_speakers_are_detected_from_the_folder(tmp_path, name, layout, first_speaker):
    pool = SourcePool.from_folder(write_pool(tmp_path, name, num_speakers=4), SAMPLE_RATE)
    assert pool.layout == layout
    assert len(pool.speakers) == 4 and pool.speakers[0] == first_speaker
    assert [len(utterances) for utterances in pool.utterances_of_speaker] == [3, 3, 3, 3]
    assert set(pool.files.num_frames) == {SAMPLE_RATE}


def test_unknown_layout_raises_an_error_naming_the_folder(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    sf.write(flat / "utterance.wav", voice(200, 0.5, seed=0), SAMPLE_RATE)
    with pytest.raises(ValueError, match=f"{flat}.*expected a LibriSpeech split"):
        SourcePool.from_folder(flat, SAMPLE_RATE)


def test_folder_without_audio_raises_an_error_naming_it(tmp_path):
    with pytest.raises(PoolError, match=str(tmp_path)):
        SourcePool.from_folder(tmp_path, SAMPLE_RATE)


def test_fewer_speakers_than_num_spks_raises_an_error_naming_the_folder(tmp_path):
    folder = write_pool(tmp_path / "sources", num_speakers=2)
    with pytest.raises(PoolError, match=f"{folder} holds 2 speakers.*num_spks=3"):
        dynamic_mixing_dataset(folder, SAMPLE_RATE, num_spks=3, segment_len=SEGMENT_LEN, epoch_len=4)


def test_index_cache_spares_reading_the_files_again(tmp_path, monkeypatch):
    folder = write_pool(tmp_path / "sources")
    first = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")

    def fail(*args, **kwargs):
        raise AssertionError("opened a file that the index cache already describes")

    monkeypatch.setattr(source_pool, "read_header", fail)
    second = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert_same_index(second.files, first.files)


def test_resampling_cache_is_built_once(tmp_path, monkeypatch):
    folder = write_pool(tmp_path / "sources", sample_rate=16000)
    first = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert all(Path(path).is_relative_to(tmp_path / "cache") for path in first.files.paths)
    assert set(first.files.num_frames) == {SAMPLE_RATE}

    def fail(*args, **kwargs):
        raise AssertionError("resampled again")

    monkeypatch.setattr(source_pool, "_resample_file", fail)
    second = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert_same_index(second.files, first.files)


def test_resampling_keeps_the_level(tmp_path):
    folder = tmp_path / "noise16k"
    folder.mkdir()
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    sf.write(folder / "tone.wav", tone, 16000)
    index = AudioIndex.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    resampled, sample_rate = sf.read(index.paths[0])
    assert sample_rate == SAMPLE_RATE and len(resampled) == SAMPLE_RATE
    rms = np.sqrt(np.mean(resampled[100:-100] ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


def test_resampling_without_cache_dir_raises_an_error_asking_for_one(tmp_path):
    folder = write_pool(tmp_path / "sources", sample_rate=16000)
    with pytest.raises(ValueError, match="16000 Hz but sample_rate is 8000 Hz: pass a cache_dir"):
        SourcePool.from_folder(folder, SAMPLE_RATE)


def test_a_corrupt_file_in_the_pool_is_one_line_naming_it(tmp_path):
    folder = write_pool(tmp_path / "sources")
    corrupt = next(folder.rglob("*.wav")).with_name("corrupt.wav")
    corrupt.write_bytes(b"RIFF not really audio" * 10)
    with pytest.raises(PoolError, match=rf"unreadable audio file {corrupt}: .* \(in the pool {folder}\)") as error:
        SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert "\n" not in str(error.value)


def test_silent_files_and_stereo_files_silent_on_their_first_channel_are_left_out_with_a_warning(tmp_path, caplog):
    folder = write_pool(tmp_path / "sources")
    sf.write(folder / "spk00" / "spk00_0000.wav", np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    speech = voice(SPEAKER_F0S[1], 1.0, seed=0)
    sf.write(folder / "spk01" / "spk01_0000.wav", np.stack([np.zeros_like(speech), speech], axis=1), SAMPLE_RATE)
    with caplog.at_level("WARNING"):
        pool = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert "spk00/spk00_0000.wav" not in pool.files.rel_paths and "spk01/spk01_0000.wav" not in pool.files.rel_paths
    assert len(pool.files) == 13
    assert "Leaving out audio files of" in caplog.text and "2 silent, e.g. spk00/spk00_0000.wav" in caplog.text


def test_a_training_run_warns_once_of_the_silent_files_it_leaves_out(tmp_path, monkeypatch, caplog):
    folder = write_pool(tmp_path / "sources")
    sf.write(folder / "spk00" / "spk00_0000.wav", np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    corpus = make_wsj0mix(tmp_path / "data", per_split=1)
    monkeypatch.setattr(experiment, "create_experiment_directory", lambda folder, script: None)
    argv = ["hparams/convtasnet.yaml", f"--data_folder={corpus}", f"--output_folder={tmp_path / 'run'}"]
    argv += [f"--{key}={value}" for key, value in TINY_CONVTASNET.items()]
    with caplog.at_level("WARNING"):
        train.prepare_experiment([*argv, "--dynamic_mixing=True", f"--base_folder_dm={folder}"])
    assert sum("Leaving out audio files" in record.getMessage() for record in caplog.records) == 1


def test_a_pool_of_silent_files_is_one_error_line(tmp_path):
    folder = write_pool(tmp_path / "sources", silent=True)
    with pytest.raises(PoolError, match=f"no usable audio file under {folder}: 15 silent") as error:
        dynamic_mixing_dataset(folder, SAMPLE_RATE, num_spks=2, segment_len=SEGMENT_LEN, epoch_len=4)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["dangling link", "fifo"])
def test_a_dangling_link_or_a_fifo_in_the_pool_is_one_line_naming_it(tmp_path, kind):
    folder = write_pool(tmp_path / "sources")
    odd = folder / "spk00" / "spk00_0099.wav"
    if kind == "fifo":
        os.mkfifo(odd)  # opening it would wait for a writer forever
    else:
        odd.symlink_to(tmp_path / "moved_away.wav")
    expected = "not a regular file" if kind == "fifo" else "broken symbolic link"
    with pytest.raises(PoolError, match=f"{odd} in the pool: {expected}"):
        SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")


def test_a_link_loop_in_the_pool_is_not_followed_and_named_once(tmp_path, caplog):
    folder = write_pool(tmp_path / "sources")
    (folder / "spk00" / "loop").symlink_to("..")
    with caplog.at_level("WARNING"):
        pool = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert len(pool.files) == 15
    loop_lines = [record.getMessage() for record in caplog.records if "loop" in record.getMessage()]
    assert loop_lines == [f"Not following {folder / 'spk00' / 'loop'}: it leads back to {folder}, a folder above it"]


def test_a_flac_without_a_length_in_its_header_is_indexed_at_its_length_and_read_from_a_copy(tmp_path):
    folder = write_pool(tmp_path / "sources")
    stream = flac_without_length(folder / "spk00" / "spk00_0000.flac", voice(SPEAKER_F0S[0], 0.5, seed=1))
    (folder / "spk00" / "spk00_0000.wav").unlink()
    pool = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    index = pool.files.rel_paths.index(stream.relative_to(folder).as_posix())
    assert pool.files.num_frames[index] == SAMPLE_RATE // 2
    assert sf.info(pool.files.paths[index]).frames == SAMPLE_RATE // 2  # a copy whose header says so
