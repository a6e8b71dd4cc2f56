"""prepare_data.py's manifests: which mixtures, sources and noise each corpus layout and task reads."""

import numpy as np
import pytest
import soundfile as sf

from prepare_data import prepare_data
from speechsep.data.layouts import MIXTURE_FOLDERS, DataPreparationError, detect_layout
from speechsep.data.manifests import separation_dataset
from speechsep.training.preflight import TASKS
from tests.corpus_trees import make_aishell1mix, make_custom, make_librimix, make_wham, make_whamr, make_wsj0mix
from tests.helpers import read_csv


@pytest.mark.parametrize("num_spks", [2, 3])
@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_wsj0mix_manifests_list_every_mixture_with_its_sources(tmp_path, num_spks, sample_rate):
    data = make_wsj0mix(tmp_path, num_spks=num_spks, sample_rate=sample_rate, per_split=3)
    paths = prepare_data(data, tmp_path / "save", num_spks=num_spks, sample_rate=sample_rate)
    rows = read_csv(paths["test"])
    assert [r["ID"] for r in rows] == [f"tt_{i:03d}_mix" for i in range(3)]
    expected_columns = ["ID", "duration", "mix_wav"] + [f"s{k}_wav" for k in range(1, num_spks + 1)]
    assert list(rows[0]) == expected_columns
    first = rows[0]
    assert first["mix_wav"] == f"$data_root/wav{sample_rate // 1000}k/min/tt/mix/tt_000_mix.wav"
    mixture_path = first["mix_wav"].replace("$data_root", str(data))
    assert float(first["duration"]) == pytest.approx(sf.info(mixture_path).duration, abs=1e-3)
    assert len(read_csv(paths["train"])) == 3 and len(read_csv(paths["valid"])) == 3


def test_librimix_manifests_use_clean_or_noisy_mixtures_and_keep_the_noise(tmp_path):
    data = make_librimix(tmp_path, per_split=2)
    clean = read_csv(prepare_data(data, tmp_path / "clean")["train"])
    noisy = read_csv(prepare_data(data, tmp_path / "noisy", use_wham_noise=True)["train"])
    assert "/train-360/mix_clean/" in clean[0]["mix_wav"]
    assert "/train-360/mix_both/" in noisy[0]["mix_wav"]
    assert noisy[0]["noise_wav"].endswith(f"/train-360/noise/{noisy[0]['ID']}.wav")
    assert read_csv(tmp_path / "clean" / "valid.csv")[0]["mix_wav"].startswith("$data_root/wav8k/min/dev/")


def test_librimix_train_subset_both_reads_train_100_and_train_360(tmp_path):
    data = make_librimix(tmp_path, per_split=2)
    base = data / "wav8k" / "min"
    (base / "train-360").rename(base / "train-100")
    for path in (base / "train-100").glob("*/*.wav"):  # IDs unique across subsets, as in LibriMix
        path.rename(path.with_name(path.name.replace("train-360", "train-100")))
    with pytest.raises(DataPreparationError, match="train-360"):
        prepare_data(data, tmp_path / "save", librimix_train_subset="360")
    make_librimix(tmp_path, per_split=2, seed=1)  # a train-360 again
    rows = read_csv(prepare_data(data, tmp_path / "both", librimix_train_subset="both")["train"])
    assert sorted({r["mix_wav"].split("/")[3] for r in rows}) == ["train-100", "train-360"]


def test_custom_layout_is_detected_and_prepared(tmp_path):
    data = make_custom(tmp_path, num_spks=3, per_split=2)
    assert detect_layout(data) == "custom"
    rows = read_csv(prepare_data(data, tmp_path / "save", num_spks=3)["valid"])
    assert rows[0]["s3_wav"] == "$data_root/valid/source3/utt000.wav"


def test_layout_is_detected_from_the_tree_not_the_path_name(tmp_path):
    wsj = make_wsj0mix(tmp_path / "Libri2Mix_copy")  # a misleading folder name
    assert detect_layout(wsj) == "wsj0mix"
    assert detect_layout(make_librimix(tmp_path / "wsj0")) == "librimix"


def test_each_layout_is_told_from_the_others_by_its_test_split_folders(tmp_path):
    assert detect_layout(make_wsj0mix(tmp_path / "a", per_split=1)) == "wsj0mix"
    assert detect_layout(make_wham(tmp_path / "b", per_split=1)) == "wham"
    assert detect_layout(make_whamr(tmp_path / "c", per_split=1)) == "whamr"
    assert detect_layout(make_librimix(tmp_path / "d", per_split=1)) == "librimix"
    assert detect_layout(make_aishell1mix(tmp_path / "e", per_split=1)) == "aishell1mix"


def test_every_task_has_its_noisy_mixture_folder_and_no_other_task_has_one():
    assert {task for task, noisy in MIXTURE_FOLDERS if noisy} == set(TASKS)
    assert {task for task, _ in MIXTURE_FOLDERS} == set(TASKS)


def test_wham_noisy_separation_reads_mix_both_with_the_anechoic_sources_and_the_noise(tmp_path):
    data = make_wham(tmp_path, per_split=2)
    rows = read_csv(prepare_data(data, tmp_path / "save", use_wham_noise=True)["train"])
    assert [r["ID"] for r in rows] == ["tr_000_mix", "tr_001_mix"]
    assert rows[0]["mix_wav"] == "$data_root/wav8k/min/tr/mix_both/tr_000_mix.wav"
    assert [rows[0]["s1_wav"], rows[0]["s2_wav"], rows[0]["noise_wav"]] == [
        f"$data_root/wav8k/min/tr/{folder}/tr_000_mix.wav" for folder in ("s1", "s2", "noise")
    ]
    assert read_csv(tmp_path / "save" / "test.csv")[1]["mix_wav"].endswith("/tt/mix_both/tt_001_mix.wav")


def test_wham_clean_separation_reads_mix_clean(tmp_path):
    data = make_wham(tmp_path, per_split=2)
    rows = read_csv(prepare_data(data, tmp_path / "save")["valid"])
    assert rows[0]["mix_wav"] == "$data_root/wav8k/min/cv/mix_clean/cv_000_mix.wav"


def test_whamr_trains_on_the_noisy_reverberant_mixture_towards_the_anechoic_sources(tmp_path):
    data = make_whamr(tmp_path, per_split=2)
    paths = prepare_data(data, tmp_path / "save", use_wham_noise=True)
    row = read_csv(paths["train"])[0]
    folders = {column: row[column].split("/")[-2] for column in ("mix_wav", "s1_wav", "s2_wav", "noise_wav")}
    assert folders == {
        "mix_wav": "mix_both_reverb",
        "s1_wav": "s1_anechoic",
        "s2_wav": "s2_anechoic",
        "noise_wav": "noise",
    }

    item = separation_dataset(paths["train"], str(data), num_spks=2, with_noise=True)[0]
    split = data / "wav8k/min/tr"
    on_disk = {
        folder: sf.read(split / folder / "tr_000_mix.wav", dtype="float32")[0]
        for folder in ("mix_both_reverb", "mix_both_anechoic", "s1_anechoic", "s1_reverb", "s2_anechoic")
    }
    np.testing.assert_array_equal(item["mix_sig"].numpy(), on_disk["mix_both_reverb"])
    np.testing.assert_array_equal(item["s1_sig"].numpy(), on_disk["s1_anechoic"])
    np.testing.assert_array_equal(item["s2_sig"].numpy(), on_disk["s2_anechoic"])
    assert not np.allclose(on_disk["mix_both_reverb"], on_disk["mix_both_anechoic"], atol=1e-3)  # distinguishable
    assert not np.allclose(on_disk["s1_anechoic"], on_disk["s1_reverb"], atol=1e-3)


def test_whamr_clean_separation_reads_the_clean_reverberant_mixtures(tmp_path):
    data = make_whamr(tmp_path, per_split=1)
    row = read_csv(prepare_data(data, tmp_path / "save")["test"])[0]
    assert row["mix_wav"].endswith("/tt/mix_clean_reverb/tt_000_mix.wav") and "/tt/s2_anechoic/" in row["s2_wav"]


@pytest.mark.parametrize("num_spks", [2, 3])
@pytest.mark.parametrize("use_wham_noise, mixture_folder", [(False, "mix_clean"), (True, "mix_both")])
def test_aishell1mix_trains_on_its_train_split_with_clean_or_noisy_mixtures(
    tmp_path, num_spks, use_wham_noise, mixture_folder
):
    data = make_aishell1mix(tmp_path, num_spks=num_spks, per_split=2)
    paths = prepare_data(data, tmp_path / "save", num_spks=num_spks, use_wham_noise=use_wham_noise)
    rows = {split: read_csv(paths[split]) for split in ("train", "valid", "test")}
    assert rows["train"][0]["mix_wav"] == f"$data_root/wav8k/min/train/{mixture_folder}/train_000_mix.wav"
    assert rows["valid"][1]["mix_wav"] == f"$data_root/wav8k/min/dev/{mixture_folder}/dev_001_mix.wav"
    assert rows["test"][0][f"s{num_spks}_wav"] == f"$data_root/wav8k/min/test/s{num_spks}/test_000_mix.wav"
    assert rows["test"][0]["noise_wav"].endswith("/test/noise/test_000_mix.wav")


@pytest.mark.parametrize(
    "make_tree, task, mixture, target",
    [
        (make_wham, "enhancement", "tt/mix_single", "tt/s1"),
        (make_whamr, "enhancement", "tt/mix_single_reverb", "tt/s1_anechoic"),
        (make_librimix, "enhancement", "test/mix_single", "test/s1"),
        (make_aishell1mix, "enhancement", "test/mix_single", "test/s1"),
        (make_wham, "enhancement_both", "tt/mix_both", "tt/mix_clean"),
        (make_whamr, "enhancement_both", "tt/mix_both_reverb", "tt/mix_clean_anechoic"),
        (make_librimix, "enhancement_both", "test/mix_both", "test/mix_clean"),
        (make_aishell1mix, "enhancement_both", "test/mix_both", "test/mix_clean"),
    ],
)
def test_enhancement_reads_the_noisy_mixtures_and_their_one_target(tmp_path, make_tree, task, mixture, target):
    """enhancement: one speaker in noise -> that speaker; enhancement_both: every speaker in noise -> the clean mixture."""
    data = make_tree(tmp_path, per_split=2)
    paths = prepare_data(data, tmp_path / "save", num_spks=1, use_wham_noise=True, task=task)
    row = read_csv(paths["test"])[0]
    assert list(row) == ["ID", "duration", "mix_wav", "s1_wav", "noise_wav"]
    assert f"/{mixture}/" in row["mix_wav"] and f"/{target}/" in row["s1_wav"]


def test_splits_prepares_only_those_manifests(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=1)
    paths = prepare_data(data, tmp_path / "save", splits=["test"])
    assert list(paths) == ["test"]
    assert sorted(path.name for path in (tmp_path / "save").iterdir()) == ["prepare_options.json", "test.csv"]
