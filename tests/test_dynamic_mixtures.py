"""Dynamic mixing's mixtures: sums of distinct speakers, their levels, and the same draws for a seed, epoch, rank and worker."""

from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing
from speechbrain.dataio.batch import PaddedBatch
from torch.utils.data import DataLoader, DistributedSampler

from speechsep.data.dynamic_mixing import DynamicMixingDataset, LibriMixLevels, Wsj0Levels
from speechsep.data.source_pool import AudioIndex, SourcePool
from tests.helpers import SAMPLE_RATE, SEGMENT_LEN, SPEAKER_F0S, make_dataset, write_noise, write_pool


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
