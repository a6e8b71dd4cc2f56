"""Bad input gets a one-line error naming the path or key (or a counted skip where the user asked)."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from prepare_data import DataPreparationError, prepare_data
from speechsep.dataio import separation_dataset
from speechsep.errors import RecipeError
from speechsep.losses import pit_si_snr_loss
from tests.conftest import REPO, TINY_CONVTASNET
from tests.corpus_trees import make_wsj0mix


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
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def last_line(result):
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1]


def test_unwritable_output_folder_is_reported_before_training(corpus, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_train(f"--data_folder={corpus}", f"--output_folder={blocker}/run")
    assert last_line(result) == f"error: output_folder {blocker}/run cannot be written: Not a directory"
    assert not (tmp_path / "save").exists()


def test_unwritable_results_folder_is_reported_before_training(corpus, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_train(f"--data_folder={corpus}", f"--output_folder={tmp_path}/run", f"--results_folder={blocker}/eval")
    assert last_line(result) == f"error: results_folder {blocker}/eval cannot be written: Not a directory"
    assert not (tmp_path / "run" / "save").exists()


def test_bad_manifest_given_with_skip_prep_is_one_line(corpus, tmp_path):
    manifest = tmp_path / "upstream.csv"
    manifest.write_text("ID,duration,mix_wav\n")
    result = run_train(
        f"--data_folder={corpus}", f"--output_folder={tmp_path}/run", "--skip_prep=True", f"--train_data={manifest}"
    )
    assert last_line(result).startswith(f"error: {manifest} lacks column(s) ['s1_wav', 's2_wav']")


def test_wrong_sample_rate_in_the_config_is_one_line(corpus, tmp_path):
    result = run_train(f"--data_folder={corpus}", f"--output_folder={tmp_path}/run", "--sample_rate=16000")
    assert last_line(result).startswith(f"error: {corpus}/wav16k/min not found (sample_rate=16000, mode=min)")


def test_unknown_sdr_permutation_is_reported_before_training(corpus, tmp_path):
    result = run_train(f"--data_folder={corpus}", f"--output_folder={tmp_path}/run", "--sdr_permutation=snr")
    assert last_line(result) == "error: sdr_permutation is 'snr'; expected sdr or sir"
    assert not (tmp_path / "run" / "save" / "train.csv").exists()  # stopped before data preparation


def test_mixture_consistency_on_noisy_mixtures_is_refused_before_training(corpus, tmp_path):
    result = run_train(
        f"--data_folder={corpus}", f"--output_folder={tmp_path}/run", "--use_wham_noise=True",
        "--test_mixture_consistency=True",
    )
    assert last_line(result) == (
        "error: test_mixture_consistency needs mixtures of speech alone; it cannot be used with use_wham_noise"
    )
    assert not (tmp_path / "run" / "save" / "train.csv").exists()
