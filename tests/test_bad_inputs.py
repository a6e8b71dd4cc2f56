"""Bad input gets a one-line error naming the path or key (or a counted skip where the user asked)."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from prepare_data import prepare_data
from speechsep.data.layouts import DataPreparationError
from speechsep.data.manifests import separation_dataset
from speechsep.errors import RecipeError
from speechsep.training.losses import pit_si_snr_loss
from tests.corpus_trees import make_librimix, make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET


@pytest.fixture
def corpus(tmp_path):
    return make_wsj0mix(tmp_path / "data", per_split=2)


def prepare_fails(corpus, tmp_path, match):
    with pytest.raises(DataPreparationError, match=match) as error:
        prepare_data(corpus, tmp_path / "save")
    assert "\n" not in str(error.value)


def test_source_shorter_than_its_mixture(corpus, tmp_path):
    path = corpus / "wav8k/min/tr/s2/tr_001_mix.wav"
    signal, rate = sf.read(path)
    sf.write(path, signal[:-10], rate)
    prepare_fails(corpus, tmp_path, f"{path} has {len(signal) - 10} samples, its mixture .* has {len(signal)}")


def test_multichannel_source(corpus, tmp_path):
    path = corpus / "wav8k/min/cv/s1/cv_000_mix.wav"
    signal, rate = sf.read(path)
    sf.write(path, np.stack([signal, signal], axis=1), rate)
    prepare_fails(corpus, tmp_path, f"{path} has 2 channels, expected mono")


def test_empty_file(corpus, tmp_path):
    path = corpus / "wav8k/min/tt/mix/tt_001_mix.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 8000)
    prepare_fails(corpus, tmp_path, f"empty audio file {path} \\(0 samples\\)")


def test_corrupt_file(corpus, tmp_path):
    path = corpus / "wav8k/min/tr/s1/tr_000_mix.wav"
    path.write_bytes(b"RIFF\x00\x00garbage, not a wave file at all")
    prepare_fails(corpus, tmp_path, f"unreadable audio file {path}")


def test_truncated_file(corpus, tmp_path):
    path = corpus / "wav8k/min/tr/s2/tr_000_mix.wav"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    prepare_fails(corpus, tmp_path, str(path))


def write_with_one_bad_sample(path, value, subtype="FLOAT"):
    signal, rate = sf.read(path)
    signal[len(signal) // 2] = value
    sf.write(path, signal, rate, subtype=subtype)


def test_nan_in_a_mixture(corpus, tmp_path):
    path = corpus / "wav8k/min/cv/mix/cv_001_mix.wav"
    write_with_one_bad_sample(path, float("nan"))
    prepare_fails(corpus, tmp_path, f"non-finite sample \\(NaN or inf\\) in {path} at sample ")


def test_inf_in_a_double_precision_source(corpus, tmp_path):
    path = corpus / "wav8k/min/tt/s2/tt_000_mix.wav"
    write_with_one_bad_sample(path, float("-inf"), subtype="DOUBLE")
    prepare_fails(corpus, tmp_path, f"non-finite sample \\(NaN or inf\\) in {path}")


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_all_silent_reference(corpus, tmp_path, subtype):
    path = corpus / "wav8k/min/tt/s1/tt_001_mix.wav"
    sf.write(path, np.zeros(sf.info(path).frames), 8000, subtype=subtype)
    prepare_fails(corpus, tmp_path, f"silent reference {path}: every sample is 0")


def test_quiet_pcm_reference_is_not_silent(corpus, tmp_path):
    path = corpus / "wav8k/min/tt/s1/tt_001_mix.wav"
    quiet = np.zeros(sf.info(path).frames, dtype=np.int32)
    quiet[-1] = 1  # the smallest 24-bit step, at the very end
    sf.write(path, quiet << 8, 8000, subtype="PCM_24")
    assert prepare_data(corpus, tmp_path / "save")["test"].is_file()


def write_manifest(path, rows):
    path.write_text("ID,duration,mix_wav,s1_wav,s2_wav\n" + "".join(",".join(row) + "\n" for row in rows))
    return path


def manifest_row(example_id, name="tt_000_mix"):
    return [example_id, "1.0"] + [f"$data_root/wav8k/min/tt/{folder}/{name}.wav" for folder in ("mix", "s1", "s2")]


def test_manifest_naming_a_missing_file_names_the_csv_the_row_and_the_path(corpus, tmp_path):
    bad_row = manifest_row("b", name="not_there")
    manifest = write_manifest(tmp_path / "test.csv", [manifest_row("a"), bad_row])
    missing = corpus / "wav8k/min/tt/mix/not_there.wav"
    with pytest.raises(RecipeError, match=f"{manifest} line 3 \\(ID b\\): mix_wav file not found: {missing}$"):
        separation_dataset(str(manifest), data_root=str(corpus), num_spks=2)


def test_manifest_with_a_duplicate_id_names_both_rows(corpus, tmp_path):
    manifest = write_manifest(tmp_path / "test.csv", [manifest_row("a"), manifest_row("a")])
    with pytest.raises(RecipeError, match=f"{manifest} line 3: duplicate ID 'a' \\(first on line 2\\)"):
        separation_dataset(str(manifest), data_root=str(corpus), num_spks=2)


def test_dollar_sign_in_a_file_name_survives_the_manifest(corpus, tmp_path):
    for folder in ("mix", "s1", "s2"):
        split_folder = corpus / "wav8k/min/tt" / folder
        (split_folder / "tt_000_mix.wav").rename(split_folder / "a$b.wav")
    test_csv = prepare_data(corpus, tmp_path / "save")["test"]
    dataset = separation_dataset(str(test_csv), data_root=str(corpus), num_spks=2)
    assert dataset[0]["id"] == "a$b"
    assert len(dataset[0]["mix_sig"]) == sf.info(corpus / "wav8k/min/tt/mix/a$b.wav").frames


def test_manifest_with_a_missing_column(tmp_path):
    manifest = tmp_path / "train.csv"
    manifest.write_text("ID,duration,mix_wav,s1_wav\nutt1,1.0,a.wav,b.wav\n")
    with pytest.raises(RecipeError, match=f"{manifest} lacks column\\(s\\) \\['s2_wav'\\]"):
        separation_dataset(str(manifest), data_root=str(tmp_path), num_spks=2)


def test_silent_reference_gives_finite_loss_and_gradients():
    sources = torch.randn(1, 800, 2)
    sources[..., 1] = 0.0
    est_sources = torch.randn(1, 800, 2, requires_grad=True)
    loss = pit_si_snr_loss(est_sources, sources)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(est_sources.grad).all()


def run_train(*args):
    command = [sys.executable, "train.py", "hparams/convtasnet.yaml", "--noprogressbar", *args]
    command += [f"--{key}={value}" for key, value in TINY_CONVTASNET.items()]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def last_line(result):
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_unwritable_output_folder_is_reported_before_training(corpus, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_train(f"--data_folder={corpus}", f"--output_folder={blocker}/run")
    assert last_line(result) == f"error: output_folder {blocker}/run cannot be written: Not a directory"
    assert not (tmp_path / "save").exists()


@pytest.mark.slow
def test_unwritable_results_folder_is_reported_before_training(corpus, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_train(f"--data_folder={corpus}", f"--output_folder={tmp_path}/run", f"--results_folder={blocker}/eval")
    assert last_line(result) == f"error: results_folder {blocker}/eval cannot be written: Not a directory"
    assert not (tmp_path / "run" / "save").exists()


@pytest.mark.slow
def test_bad_manifest_given_with_skip_prep_is_one_line(corpus, tmp_path):
    manifest = tmp_path / "upstream.csv"
    manifest.write_text("ID,duration,mix_wav\n")
    result = run_train(
        f"--data_folder={corpus}", f"--output_folder={tmp_path}/run", "--skip_prep=True", f"--train_data={manifest}"
    )
    assert last_line(result).startswith(f"error: {manifest} lacks column(s) ['s1_wav', 's2_wav']")


@pytest.mark.slow
def test_wrong_sample_rate_in_the_config_is_one_line(corpus, tmp_path):
    result = run_train(f"--data_folder={corpus}", f"--output_folder={tmp_path}/run", "--sample_rate=16000")
    assert last_line(result).startswith(f"error: {corpus}/wav16k/min not found (sample_rate=16000, mode=min)")


@pytest.mark.slow
def test_unknown_sdr_permutation_is_reported_before_training(corpus, tmp_path):
    result = run_train(f"--data_folder={corpus}", f"--output_folder={tmp_path}/run", "--sdr_permutation=snr")
    assert last_line(result) == "error: sdr_permutation is 'snr'; expected sdr or sir"
    assert not (tmp_path / "run" / "save" / "train.csv").exists()  # stopped before data preparation


@pytest.mark.slow
def test_mixture_consistency_on_noisy_mixtures_is_refused_before_training(corpus, tmp_path):
    result = run_train(
        f"--data_folder={corpus}",
        f"--output_folder={tmp_path}/run",
        "--use_wham_noise=True",
        "--test_mixture_consistency=True",
    )
    assert last_line(result) == (
        "error: test_mixture_consistency needs mixtures of speech alone; it cannot be used with use_wham_noise"
    )
    assert not (tmp_path / "run" / "save" / "train.csv").exists()


@pytest.mark.slow
def test_tree_of_three_speakers_with_the_default_num_spks_is_one_line(tmp_path):
    corpus = make_wsj0mix(tmp_path / "data", num_spks=3, per_split=2)
    result = run_train(f"--data_folder={corpus}", f"--output_folder={tmp_path}/run")
    assert last_line(result).startswith(f"error: found source folder {corpus}/wav8k/min/tr/s3 but num_spks is 2")


@pytest.mark.slow
def test_custom_test_manifest_naming_a_missing_file_is_one_line(corpus, tmp_path):
    prepare_data(corpus, tmp_path / "run" / "save")
    manifest = write_manifest(tmp_path / "my_test.csv", [manifest_row("a", name="gone")])
    result = run_train(
        f"--data_folder={corpus}", f"--output_folder={tmp_path}/run", "--skip_prep=True", f"--test_data={manifest}"
    )
    missing = corpus / "wav8k/min/tt/mix/gone.wav"
    assert last_line(result) == f"error: {manifest} line 2 (ID a): mix_wav file not found: {missing}"


@pytest.mark.slow
def test_enhancement_of_a_noisy_corpus_without_its_noise_is_refused_before_the_run_folder_is_made(tmp_path):
    """The corpus-and-task rule is a preflight check: nothing built, nothing written into output_folder."""
    data_folder = make_librimix(tmp_path / "corpus", per_split=1)
    output_folder = tmp_path / "run"
    result = run_train(
        f"--data_folder={data_folder}", f"--output_folder={output_folder}", "--task=enhancement", "--num_spks=1"
    )
    assert last_line(result) == "error: task=enhancement removes noise: it needs use_wham_noise=True (mix_single)"
    assert not output_folder.exists()
