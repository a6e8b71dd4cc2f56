"""prepare_data.py on trees it cannot use: one line naming the file, folder or value and the fix; bad items skipped."""

import numpy as np
import pytest
import soundfile as sf

from prepare_data import prepare_data
from speechsep.data.layouts import DataPreparationError
from tests.corpus_trees import make_aishell1mix, make_custom, make_librimix, make_wham, make_whamr, make_wsj0mix
from tests.helpers import read_csv


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


def test_skip_bad_files_excludes_and_reports_bad_items(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=3)
    (data / "wav8k/min/tr/s1/tr_001_mix.wav").unlink()
    paths = prepare_data(data, tmp_path / "save", skip_bad_files=True)
    assert [r["ID"] for r in read_csv(paths["train"])] == ["tr_000_mix", "tr_002_mix"]
    report = read_csv(tmp_path / "save" / "skipped_files.csv")
    assert len(report) == 1 and "tr_001_mix" in report[0]["mixture"] and report[0]["reason"].startswith("missing file")


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


def test_aishell1mix_with_a_third_speaker_and_num_spks_2_names_the_extra_folder(tmp_path):
    data = make_aishell1mix(tmp_path, num_spks=3, per_split=1)
    with pytest.raises(DataPreparationError, match=f"found source folder {data}/wav8k/min/train/s3 but num_spks is 2"):
        prepare_data(data, tmp_path / "save")


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


@pytest.mark.parametrize("save_folder", ["a_file", "a_file/sub"])
def test_save_folder_that_cannot_be_created_is_one_line_naming_it(tmp_path, save_folder):
    data = make_wsj0mix(tmp_path, per_split=1)
    (tmp_path / "a_file").write_text("not a folder\n")
    with pytest.raises(DataPreparationError, match=f"save_folder {tmp_path / save_folder} cannot be created"):
        prepare_data(data, tmp_path / save_folder)
