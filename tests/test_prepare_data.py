"""prepare_data.py on small generated WSJ0Mix, LibriMix and custom trees."""

import csv

import pytest
import soundfile as sf

from prepare_data import DataPreparationError, detect_layout, prepare_data
from tests.corpus_trees import make_custom, make_librimix, make_wsj0mix


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
