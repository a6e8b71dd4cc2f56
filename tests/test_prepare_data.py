"""prepare_data.py on small generated WSJ0Mix, WHAM!, WHAMR!, LibriMix, Aishell1Mix and custom trees."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from prepare_data import prepare_data
from speechsep.data.layouts import MIXTURE_FOLDERS, DataPreparationError, detect_layout
from speechsep.data.manifests import separation_dataset
from speechsep.training.preflight import TASKS
from tests.corpus_trees import make_aishell1mix, make_custom, make_librimix, make_wham, make_whamr, make_wsj0mix
from tests.helpers import REPO, limit_file_size


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


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


def test_unknown_layout_error_names_the_folder_and_the_expected_layouts(tmp_path):
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(DataPreparationError, match="unknown data layout in .*nothing_here.*WSJ0Mix.*LibriMix"):
        prepare_data(tmp_path / "nothing_here", tmp_path / "save")


def test_missing_source_file_error_names_the_missing_path(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=2)
    missing = data / "wav8k/min/cv/s2/cv_001_mix.wav"
    missing.unlink()
    with pytest.raises(DataPreparationError, match=f"missing file {missing}"):
        prepare_data(data, tmp_path / "save")


def test_wrong_sample_rate_and_missing_rate_folder_are_reported(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=2)
    with pytest.raises(DataPreparationError, match="wav16k/min not found.*available: \\['wav8k/min'\\]"):
        prepare_data(data, tmp_path / "save", sample_rate=16000)
    bad = data / "wav8k/min/tt/s1/tt_000_mix.wav"
    signal, _ = sf.read(bad)
    sf.write(bad, signal, 16000)
    with pytest.raises(DataPreparationError, match="sampled at 16000 Hz, the config says 8000"):
        prepare_data(data, tmp_path / "save")


def test_three_speakers_requested_on_a_two_speaker_tree_names_the_missing_folder(tmp_path):
    data = make_wsj0mix(tmp_path, num_spks=2, per_split=2)
    with pytest.raises(DataPreparationError, match="missing folder .*/tr/s3"):
        prepare_data(data, tmp_path / "save", num_spks=3)


def test_rerun_with_same_options_reuses_manifests_and_new_options_regenerate(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=2)
    paths = prepare_data(data, tmp_path / "save")
    paths["train"].write_text("marker\n")
    prepare_data(data, tmp_path / "save")
    assert paths["train"].read_text() == "marker\n"
    prepare_data(data, tmp_path / "save", mode="min", skip_bad_files=True)
    assert read_csv(paths["train"])[0]["ID"] == "tr_000_mix"


def test_skip_bad_files_excludes_and_reports_bad_items(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=3)
    (data / "wav8k/min/tr/s1/tr_001_mix.wav").unlink()
    paths = prepare_data(data, tmp_path / "save", skip_bad_files=True)
    assert [r["ID"] for r in read_csv(paths["train"])] == ["tr_000_mix", "tr_002_mix"]
    report = read_csv(tmp_path / "save" / "skipped_files.csv")
    assert len(report) == 1 and "tr_001_mix" in report[0]["mixture"] and report[0]["reason"].startswith("missing file")


def copy_example(split_folder, name, new_name, folders=("mix", "s1", "s2")):
    """Add an example to a WSJ0Mix split by copying an existing one under a new name."""
    for folder in folders:
        (split_folder / folder / f"{new_name}.wav").write_bytes((split_folder / folder / f"{name}.wav").read_bytes())


def test_test_mixture_added_after_preparation_is_in_the_regenerated_manifest(tmp_path, caplog):
    data = make_wsj0mix(tmp_path, per_split=2)
    paths = prepare_data(data, tmp_path / "save")
    copy_example(data / "wav8k/min/tt", "tt_000_mix", "tt_new_mix")
    with caplog.at_level("INFO", logger="prepare_data"):
        prepare_data(data, tmp_path / "save")
    assert "tt_new_mix" in [r["ID"] for r in read_csv(paths["test"])]
    assert "files in the data tree changed" in caplog.text


def test_test_mixture_removed_after_preparation_is_left_out_of_the_regenerated_manifest(tmp_path, caplog):
    data = make_wsj0mix(tmp_path, per_split=2)
    paths = prepare_data(data, tmp_path / "save")
    for folder in ("mix", "s1", "s2"):
        (data / "wav8k/min/tt" / folder / "tt_001_mix.wav").unlink()
    with caplog.at_level("INFO", logger="prepare_data"):
        prepare_data(data, tmp_path / "save")
    assert [r["ID"] for r in read_csv(paths["test"])] == ["tt_000_mix"]
    assert "files in the data tree changed" in caplog.text


def test_rewritten_source_after_preparation_regenerates_the_manifests(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=2)
    paths = prepare_data(data, tmp_path / "save")
    paths["test"].write_text("marker\n")
    source = data / "wav8k/min/tr/s1/tr_000_mix.wav"
    signal, rate = sf.read(source)
    sf.write(source, 0.5 * signal, rate, subtype="PCM_16")  # same length, another size and mtime
    prepare_data(data, tmp_path / "save")
    assert read_csv(paths["test"])[0]["ID"] == "tt_000_mix"


def rename_example(split_folder, name, mixture_suffix, source_suffix, folders=("s1", "s2")):
    (split_folder / "mix" / f"{name}.wav").rename(split_folder / "mix" / f"{name}{mixture_suffix}")
    for folder in folders:
        (split_folder / folder / f"{name}.wav").rename(split_folder / folder / f"{name}{source_suffix}")


@pytest.mark.parametrize("mixture_suffix, source_suffix", [(".WAV", ".WAV"), (".WAV", ".wav"), (".wav", ".Wav")])
def test_extensions_match_in_any_case_for_mixtures_and_their_sources(tmp_path, mixture_suffix, source_suffix):
    data = make_wsj0mix(tmp_path, per_split=2)
    rename_example(data / "wav8k/min/tt", "tt_001_mix", mixture_suffix, source_suffix)
    rows = read_csv(prepare_data(data, tmp_path / "save")["test"])
    assert [r["ID"] for r in rows] == ["tt_000_mix", "tt_001_mix"]
    assert rows[1]["mix_wav"].endswith(f"/tt/mix/tt_001_mix{mixture_suffix}")
    assert rows[1]["s2_wav"].endswith(f"/tt/s2/tt_001_mix{source_suffix}")


def test_one_name_with_two_extensions_is_a_duplicate_id_naming_both_files(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=2)
    mixture = data / "wav8k/min/cv/mix/cv_000_mix.wav"
    signal, rate = sf.read(mixture)
    sf.write(mixture.with_suffix(".flac"), signal, rate)
    with pytest.raises(DataPreparationError) as error:
        prepare_data(data, tmp_path / "save")
    message = str(error.value)
    assert "duplicate ID 'cv_000_mix'" in message and str(mixture) in message
    assert str(mixture.with_suffix(".flac")) in message and "\n" not in message


def test_source_with_two_extensions_is_ambiguous_and_names_both_files(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=2)
    source = data / "wav8k/min/tr/s2/tr_001_mix.wav"
    source.with_suffix(".WAV").write_bytes(source.read_bytes())
    mixture = data / "wav8k/min/tr/mix/tr_001_mix.wav"
    both = f"{source.with_suffix('.WAV')} and {source}"
    with pytest.raises(DataPreparationError, match=f"2 candidates for a source of mixture {mixture}: {both}"):
        prepare_data(data, tmp_path / "save")


@pytest.mark.parametrize("make_tree, extra_folder", [(make_wsj0mix, "wav8k/min/tr/s3"), (make_custom, "train/source3")])
def test_tree_with_more_source_folders_than_num_spks_names_the_folder_and_num_spks(tmp_path, make_tree, extra_folder):
    data = make_tree(tmp_path, num_spks=3, per_split=2)
    with pytest.raises(DataPreparationError, match=f"{data / extra_folder} .*num_spks is 2") as error:
        prepare_data(data, tmp_path / "save", num_spks=2)
    assert "\n" not in str(error.value)


def test_every_task_has_its_noisy_mixture_folder_and_no_other_task_has_one():
    assert {task for task, noisy in MIXTURE_FOLDERS if noisy} == set(TASKS)
    assert {task for task, _ in MIXTURE_FOLDERS} == set(TASKS)


@pytest.mark.parametrize("make_tree", [make_wsj0mix, make_custom])
def test_a_mixture_mode_other_than_min_or_max_is_one_line_on_any_tree(tmp_path, make_tree):
    data = make_tree(tmp_path, per_split=1)
    with pytest.raises(DataPreparationError, match="^mode must be 'min' or 'max', got 'mid'$"):
        prepare_data(data, tmp_path / "save", mode="mid")
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize("num_spks", [1, 0])
def test_num_spks_below_two_for_separation_points_to_the_enhancement_task(tmp_path, num_spks):
    data = make_wsj0mix(tmp_path, per_split=2)
    with pytest.raises(DataPreparationError, match=f"num_spks is {num_spks}, separation .*set task=enhancement"):
        prepare_data(data, tmp_path / "save", num_spks=num_spks)


def test_nonfinite_and_silent_items_are_left_out_and_listed_with_skip_bad_files(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=3)
    nan_mixture = data / "wav8k/min/cv/mix/cv_001_mix.wav"
    signal, rate = sf.read(nan_mixture)
    signal[5] = float("nan")
    sf.write(nan_mixture, signal, rate, subtype="FLOAT")
    silent_source = data / "wav8k/min/tt/s1/tt_002_mix.wav"
    sf.write(silent_source, np.zeros(sf.info(silent_source).frames), rate, subtype="PCM_16")
    paths = prepare_data(data, tmp_path / "save", skip_bad_files=True)
    assert [r["ID"] for r in read_csv(paths["valid"])] == ["cv_000_mix", "cv_002_mix"]
    assert [r["ID"] for r in read_csv(paths["test"])] == ["tt_000_mix", "tt_001_mix"]
    reasons = [r["reason"] for r in read_csv(tmp_path / "save" / "skipped_files.csv")]
    assert reasons[0].startswith(f"non-finite sample (NaN or inf) in {nan_mixture}")
    assert reasons[1].startswith(f"silent reference {silent_source}")


def test_each_layout_is_told_from_the_others_by_its_test_split_folders(tmp_path):
    assert detect_layout(make_wsj0mix(tmp_path / "a", per_split=1)) == "wsj0mix"
    assert detect_layout(make_wham(tmp_path / "b", per_split=1)) == "wham"
    assert detect_layout(make_whamr(tmp_path / "c", per_split=1)) == "whamr"
    assert detect_layout(make_librimix(tmp_path / "d", per_split=1)) == "librimix"
    assert detect_layout(make_aishell1mix(tmp_path / "e", per_split=1)) == "aishell1mix"


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


def test_wham_tree_without_the_noisy_mixtures_names_the_missing_folder(tmp_path):
    data = make_wham(tmp_path, per_split=1)
    for path in (data / "wav8k/min/cv/mix_both").iterdir():
        path.unlink()
    (data / "wav8k/min/cv/mix_both").rmdir()
    with pytest.raises(DataPreparationError, match=f"missing folder {data}/wav8k/min/cv/mix_both .*valid split"):
        prepare_data(data, tmp_path / "save", use_wham_noise=True)


# (tree maker, prepare_data options, the test split's folder of the first target source, of the mixture)
CORPORA = {
    "wham": (make_wham, {"use_wham_noise": True}, "tt/s1", "tt/mix_both"),
    "whamr": (make_whamr, {"use_wham_noise": True}, "tt/s1_anechoic", "tt/mix_both_reverb"),
    "aishell1mix": (make_aishell1mix, {"use_wham_noise": True}, "test/s1", "test/mix_both"),
    "wham-enhancement": (
        make_wham,
        {"use_wham_noise": True, "num_spks": 1, "task": "enhancement"},
        "tt/s1",
        "tt/mix_single",
    ),
}


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_missing_source_file_of_a_corpus_is_one_line_naming_it(tmp_path, corpus):
    make_tree, options, source_folder, _ = CORPORA[corpus]
    data = make_tree(tmp_path, per_split=2)
    missing = (
        data / "wav8k/min" / source_folder / sorted(p.name for p in (data / "wav8k/min" / source_folder).iterdir())[1]
    )
    missing.unlink()
    with pytest.raises(DataPreparationError, match=f"^missing file {missing} ") as error:
        prepare_data(data, tmp_path / "save", **options)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_mixture_at_another_sample_rate_in_a_corpus_is_one_line_naming_it(tmp_path, corpus):
    make_tree, options, _, mixture_folder = CORPORA[corpus]
    data = make_tree(tmp_path, per_split=2)
    bad = sorted((data / "wav8k/min" / mixture_folder).iterdir())[0]
    signal, _ = sf.read(bad)
    sf.write(bad, signal, 16000)
    with pytest.raises(DataPreparationError, match=f"^{bad} is sampled at 16000 Hz, the config says 8000 Hz$"):
        prepare_data(data, tmp_path / "save", **options)


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


def test_aishell1mix_with_a_third_speaker_and_num_spks_2_names_the_extra_folder(tmp_path):
    data = make_aishell1mix(tmp_path, num_spks=3, per_split=1)
    with pytest.raises(DataPreparationError, match=f"found source folder {data}/wav8k/min/train/s3 but num_spks is 2"):
        prepare_data(data, tmp_path / "save")


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


def test_enhancement_without_the_noisy_mixtures_is_one_line(tmp_path):
    data = make_wham(tmp_path, per_split=1)
    with pytest.raises(DataPreparationError, match="^task=enhancement removes noise: it needs use_wham_noise=True"):
        prepare_data(data, tmp_path / "save", num_spks=1, task="enhancement")


def test_enhancement_on_wsj0mix_says_it_has_no_single_speaker_mixtures(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=1)
    with pytest.raises(DataPreparationError, match=f"^{data} is WSJ0Mix, which has no single-speaker noisy mixtures"):
        prepare_data(data, tmp_path / "save", num_spks=1, use_wham_noise=True, task="enhancement")


def test_enhancement_both_without_the_noisy_mixtures_is_one_line(tmp_path):
    data = make_librimix(tmp_path, per_split=1)
    with pytest.raises(
        DataPreparationError, match="^task=enhancement_both removes noise: .*use_wham_noise=True \\(mix_both\\)$"
    ):
        prepare_data(data, tmp_path / "save", num_spks=1, task="enhancement_both")


@pytest.mark.parametrize(
    "make_tree, message",
    [
        (make_wsj0mix, "is WSJ0Mix, which has no noisy mixtures for task=enhancement_both .*in mix_both\\)$"),
        (make_custom, "is a custom tree, which has no clean mixtures for task=enhancement_both: .*task=enhancement$"),
    ],
)
def test_enhancement_both_on_a_tree_without_clean_mixtures_is_one_line(tmp_path, make_tree, message):
    data = make_tree(tmp_path, per_split=1)
    with pytest.raises(DataPreparationError, match=f"^{data} {message}"):
        prepare_data(data, tmp_path / "save", num_spks=1, use_wham_noise=True, task="enhancement_both")


def test_manifest_write_failure_is_one_line_and_keeps_the_previous_manifests_with_their_options(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=2)
    save = tmp_path / "save"
    prepare_data(data, save)
    before = {path.name: path.read_bytes() for path in save.iterdir()}
    os.utime(data / "wav8k/min/tt/mix/tt_000_mix.wav", ns=(0, 0))  # the tree changed: prepare again
    result = subprocess.run(
        [sys.executable, "prepare_data.py", str(data), str(save)],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size(100),
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: cannot write {save / 'train.csv'}: ")
    assert {path.name: path.read_bytes() for path in save.iterdir()} == before


@pytest.mark.parametrize("save_folder", ["a_file", "a_file/sub"])
def test_save_folder_that_cannot_be_created_is_one_line_naming_it(tmp_path, save_folder):
    data = make_wsj0mix(tmp_path, per_split=1)
    (tmp_path / "a_file").write_text("not a folder\n")
    with pytest.raises(DataPreparationError, match=f"save_folder {tmp_path / save_folder} cannot be created"):
        prepare_data(data, tmp_path / save_folder)


def test_splits_prepares_only_those_manifests(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=1)
    paths = prepare_data(data, tmp_path / "save", splits=["test"])
    assert list(paths) == ["test"]
    assert sorted(path.name for path in (tmp_path / "save").iterdir()) == ["prepare_options.json", "test.csv"]
