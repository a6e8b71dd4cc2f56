"""What a resumed run draws at random is what an uninterrupted one drew: training crops are functions of (seed,
epoch, example), and the process's generators are checkpointed (tests/test_interruptions.py resumes whole runs)."""

import random

import numpy as np
import pytest
import torch

from prepare_data import prepare_data
from speechsep.data.manifests import SegmentReader, separation_dataset
from speechsep.training.random_state import RandomState, rank_file
from tests.corpus_trees import make_wsj0mix

CROP = 1000
FRAMES = 8000


def test_a_crop_start_depends_only_on_seed_epoch_and_example():
    reader = SegmentReader(CROP, random_crop=True, seed=3)
    reader.epoch = 2
    ids = [f"tr_{i:03d}" for i in range(20)]
    starts = [reader.crop_start(example_id, FRAMES) for example_id in ids]
    torch.manual_seed(99)  # what the global generators hold plays no part
    again = SegmentReader(CROP, random_crop=True, seed=3)
    again.epoch = 2
    assert [again.crop_start(example_id, FRAMES) for example_id in reversed(ids)] == starts[::-1]

    other_epoch, other_seed = SegmentReader(CROP, True, seed=3), SegmentReader(CROP, True, seed=4)
    other_epoch.epoch, other_seed.epoch = 1, 2
    assert [other_epoch.crop_start(example_id, FRAMES) for example_id in ids] != starts
    assert [other_seed.crop_start(example_id, FRAMES) for example_id in ids] != starts
    assert len(set(starts)) > 1 and all(0 <= start <= FRAMES - CROP for start in starts)


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    data = make_wsj0mix(root / "data", per_split=6, seconds=0.5)
    return str(prepare_data(data, root / "save")["train"]), str(data)


def test_the_dataset_crops_each_example_alike_in_any_order_and_anew_each_epoch(train_csv):
    csv_path, data = train_csv

    def crops(order, epoch):
        dataset = separation_dataset(csv_path, data, 2, segment_len=CROP, random_crop=True, seed=7)
        dataset.set_epoch(epoch)
        return {dataset[i]["id"]: dataset[i]["mix_sig"] for i in order}

    first = crops(range(6), epoch=1)
    torch.manual_seed(0)
    again = crops(reversed(range(6)), epoch=1)
    assert all(torch.equal(first[example_id], again[example_id]) for example_id in first)
    next_epoch = crops(range(6), epoch=2)
    assert not all(torch.equal(first[example_id], next_epoch[example_id]) for example_id in first)


def draws():
    return torch.rand(3), np.random.rand(3), random.random()


def test_a_saved_random_state_makes_the_same_draws_once_loaded(tmp_path):
    state = RandomState()
    state.save(tmp_path / "random_state.ckpt")
    expected = draws()
    draws()
    state.load(tmp_path / "random_state.ckpt")
    got = draws()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_each_rank_has_its_own_random_state_file(tmp_path):
    path = tmp_path / "random_state.ckpt"
    assert rank_file(path, 0) == path
    assert rank_file(path, 1) == tmp_path / "random_state.rank1.ckpt"
