"""`python train.py ...` from the command line: train -> valid -> test on small generated corpora."""

import subprocess

import pandas as pd
import pytest
import yaml

from tests.corpus_trees import make_aishell1mix, make_librimix, make_speaker_pool, make_wham, make_whamr, make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, TINY_SEPFORMER, train_command

pytestmark = pytest.mark.slow  # every test runs train.py in a subprocess


def run_train(config, data_folder, output_folder, sizes, *extra, **overrides):
    command = train_command(
        config, data_folder, output_folder, *extra, **{"N_epochs": 2, "batch_size": 2, **sizes, **overrides}
    )
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "config, make_tree, sizes",
    [
        ("convtasnet.yaml", make_wsj0mix, TINY_CONVTASNET),
        ("sepformer-libri2mix.yaml", make_librimix, TINY_SEPFORMER),
    ],
)
def test_train_valid_test_writes_log_checkpoint_and_results(tmp_path, config, make_tree, sizes):
    data_folder = make_tree(tmp_path / "data", per_split=3, seed=1)  # a tree where epoch 2 is the best
    output = tmp_path / "out"
    result = run_train(config, data_folder, output, sizes, use_speedperturb=True)
    assert result.returncode == 0, result.stderr[-3000:]

    log = (output / "train_log.txt").read_text().splitlines()
    assert log[0].startswith("epoch: 1") and log[1].startswith("epoch: 2")
    assert "valid si-snr" in log[1] and log[-1].startswith("epoch loaded: 2")
    assert len(list((output / "save").glob("CKPT+*/masknet.ckpt"))) == 1

    results = pd.read_csv(output / "test_results.csv")
    assert list(results.columns[:5]) == ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]
    test_ids = pd.read_csv(output / "save" / "test.csv")["ID"]
    assert sorted(results["snt_id"]) == sorted(test_ids)
    assert results[["sdr", "si-snr", "si-snr_i"]].notna().all().all()
    assert (output / "hyperparams.yaml").is_file()


def test_rerun_resumes_from_the_checkpoint_instead_of_starting_over(tmp_path):
    data_folder = make_wsj0mix(tmp_path / "data", per_split=2)
    output = tmp_path / "out"
    assert run_train("convtasnet.yaml", data_folder, output, TINY_CONVTASNET).returncode == 0
    again = run_train("convtasnet.yaml", data_folder, output, TINY_CONVTASNET, N_epochs=3)
    assert again.returncode == 0, again.stderr[-3000:]
    epochs = [
        line.split(",")[0] for line in (output / "train_log.txt").read_text().splitlines() if line.startswith("epoch:")
    ]
    assert epochs == ["epoch: 1", "epoch: 2", "epoch: 3"]


def test_unknown_override_fails_with_one_line_naming_the_key(tmp_path):
    result = run_train("convtasnet.yaml", tmp_path, tmp_path / "out", {}, "--batchsize=3")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: unknown hyperparameter 'batchsize' (from the command line); did you mean 'batch_size'?"
    )


def test_missing_data_folder_fails_with_one_line(tmp_path):
    result = run_train("convtasnet.yaml", tmp_path / "nowhere", tmp_path / "out", TINY_CONVTASNET)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: data_folder does not exist")


def run_dynamic_mixing(config, data_folder, pool, output_folder, **overrides):
    """One epoch of a tiny Conv-TasNet on mixtures drawn from `pool`, half-second crops."""
    return run_train(
        config,
        data_folder,
        output_folder,
        TINY_CONVTASNET,
        N_epochs=1,
        dynamic_mixing=True,
        base_folder_dm=pool,
        training_signal_len=4000,
        **overrides,
    )


def test_dynamic_mixing_trains_on_mixtures_made_from_a_speaker_pool(tmp_path):
    """The epoch trains on dm_epoch_len=6 mixtures drawn from the 12-utterance pool, not on the 2 mixtures of
    the static training split that the tree also holds."""
    data_folder = make_wsj0mix(tmp_path / "data", per_split=2)
    pool = make_speaker_pool(tmp_path, num_speakers=4, utts_per_speaker=3)
    output = tmp_path / "out"
    result = run_dynamic_mixing("convtasnet.yaml", data_folder, pool, output, dm_epoch_len=6)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "test_results.csv").is_file()
    assert "train si-snr" in (output / "train_log.txt").read_text()

    (checkpoint,) = (output / "save").glob("CKPT+*")
    epoch_stats = yaml.safe_load((checkpoint / "epoch_stats.ckpt").read_text())
    assert epoch_stats["examples_seen"] == 6  # the static split would give 2
    assert yaml.safe_load((checkpoint / "brain.ckpt").read_text())["optimizer_step"] == 3  # batches of 2
    (index,) = (output / "save" / "dynamic_mixing_cache").glob("pool-*/index_8000Hz.csv")
    assert len(pd.read_csv(index)) == 12  # every pool utterance indexed


def test_whamr_dynamic_mixing_trains_on_mixtures_reverberated_in_simulated_rooms(tmp_path):
    data_folder = make_whamr(tmp_path / "data", per_split=2)
    pool = make_speaker_pool(tmp_path, num_speakers=3, utts_per_speaker=2)
    output = tmp_path / "out"
    noise = data_folder / "wav8k" / "min" / "tr" / "noise"
    result = run_dynamic_mixing(
        "convtasnet-whamr.yaml", data_folder, pool, output, dm_epoch_len=4, noise_folder_dm=noise
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\ndm_rooms: whamr " in (output / "hyperparams.yaml").read_text()
    (checkpoint,) = (output / "save").glob("CKPT+*")
    assert yaml.safe_load((checkpoint / "epoch_stats.ckpt").read_text())["examples_seen"] == 4
    assert "valid si-snr" in (output / "train_log.txt").read_text()
    results = pd.read_csv(output / "test_results.csv")
    assert sorted(results["snt_id"]) == sorted(pd.read_csv(output / "save" / "test.csv")["ID"])
    assert results[["sdr", "si-snr", "si-snr_i"]].notna().all().all()


def test_test_only_scores_the_best_checkpoint_again_and_a_custom_test_manifest(tmp_path):
    data_folder = make_wsj0mix(tmp_path / "data", per_split=3)
    output = tmp_path / "out"
    assert run_train("convtasnet.yaml", data_folder, output, TINY_CONVTASNET).returncode == 0
    first = pd.read_csv(output / "test_results.csv")
    (output / "test_results.csv").unlink()

    again = run_train("convtasnet.yaml", data_folder, output, TINY_CONVTASNET, "--test_only")
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(output / "test_results.csv"), first)

    custom = tmp_path / "custom.csv"
    pd.read_csv(output / "save" / "test.csv").iloc[:2].to_csv(custom, index=False)
    scored = run_train(
        "convtasnet.yaml",
        data_folder,
        output,
        TINY_CONVTASNET,
        "--test_only",
        skip_prep=True,
        test_data=custom,
        results_folder=tmp_path / "custom_eval" / "new",
        save_audio=False,
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "custom_eval" / "new" / "test_results.csv")
    pd.testing.assert_frame_equal(rows, first.iloc[:2])


def test_test_only_without_a_checkpoint_is_an_error(tmp_path):
    data_folder = make_wsj0mix(tmp_path / "data", per_split=2)
    result = run_train("convtasnet.yaml", data_folder, tmp_path / "out", TINY_CONVTASNET, "--test_only")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: --test_only needs a trained model")


# (config, tree maker, overrides, the test manifest's mixture folder, one of its target columns and that column's
# folder): one per (corpus, task) pair beyond WSJ0Mix and LibriMix separation.
CORPUS_TASKS = {
    "wham-sep_noisy": ("sepformer-wham.yaml", make_wham, {}, "tt/mix_both", ("s1_wav", "tt/s1")),
    "wham-sep_clean": (
        "convtasnet-wham.yaml",
        make_wham,
        {"use_wham_noise": False},
        "tt/mix_clean",
        ("s1_wav", "tt/s1"),
    ),
    "whamr-sep_noisy_reverb": (
        "sepformer-whamr.yaml",
        make_whamr,
        {},
        "tt/mix_both_reverb",
        ("s1_wav", "tt/s1_anechoic"),
    ),
    "aishell1mix-sep_noisy": (
        "sepformer-aishell1mix.yaml",
        make_aishell1mix,
        {"use_wham_noise": True},
        "test/mix_both",
        ("s1_wav", "test/s1"),
    ),
    "wham-enh_single": (
        "sepformer-wham-enhancement.yaml",
        make_wham,
        {"test_shifts": 2, "compute_stoi": True, "compute_pesq": True},
        "tt/mix_single",
        ("s1_wav", "tt/s1"),
    ),
    "librimix-enh_single": (
        "convtasnet-libri2mix.yaml",
        make_librimix,
        {"task": "enhancement", "num_spks": 1, "use_wham_noise": True},
        "test/mix_single",
        ("s1_wav", "test/s1"),
    ),
    "librimix-enh_both": (
        "convtasnet-libri2mix.yaml",
        make_librimix,
        {"task": "enhancement_both", "num_spks": 1, "use_wham_noise": True},
        "test/mix_both",
        ("s1_wav", "test/mix_clean"),
    ),
    "aishell3mix-sep_clean": (
        "sepformer-aishell1mix.yaml",
        make_aishell1mix,
        {"num_spks": 3},
        "test/mix_clean",
        ("s3_wav", "test/s3"),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("corpus_task", list(CORPUS_TASKS))
def test_each_corpus_and_task_trains_validates_and_scores_every_test_mixture(tmp_path, corpus_task):
    config, make_tree, overrides, mixture_folder, (target_column, target_folder) = CORPUS_TASKS[corpus_task]
    tree_options = {"num_spks": overrides["num_spks"]} if "num_spks" in overrides else {}
    data_folder = make_tree(tmp_path / "data", per_split=2, **tree_options)
    output = tmp_path / "out"
    sizes = TINY_SEPFORMER if config.startswith("sepformer") else TINY_CONVTASNET
    result = run_train(config, data_folder, output, sizes, N_epochs=1, **overrides)
    assert result.returncode == 0, result.stderr[-3000:]

    manifest = pd.read_csv(output / "save" / "test.csv")
    assert manifest["mix_wav"].str.contains(f"/{mixture_folder}/").all()
    assert manifest[target_column].str.contains(f"/{target_folder}/").all()
    assert "valid si-snr" in (output / "train_log.txt").read_text()
    results = pd.read_csv(output / "test_results.csv")
    assert sorted(results["snt_id"]) == sorted(manifest["ID"])
    assert results[["sdr", "sdr_i", "si-snr", "si-snr_i"]].notna().all().all()
    if overrides.get("compute_stoi"):
        assert results[["stoi", "stoi_i"]].notna().all().all()
    if overrides.get("compute_pesq"):
        assert results[["pesq", "pesq_i"]].notna().all().all()
    if overrides.get("test_shifts", 1) > 1:
        assert results["with_test_options_si-snr"].notna().all()
    num_spks = overrides.get("num_spks", 2 if "enhancement" not in config else 1)
    assert [column for column in results.columns if column.startswith("si-snr_s")] == [
        f"si-snr_s{k}" for k in range(1, num_spks + 1)
    ]


@pytest.mark.parametrize("option", ["use_speedperturb", "use_rand_shift", "test_mixture_consistency"])
def test_options_that_rebuild_the_mixture_from_its_targets_are_refused_on_whamr(tmp_path, option):
    data_folder = make_whamr(tmp_path / "data", per_split=1)
    clean = {"use_wham_noise": False}  # the clean reverberant mixtures: noise is refused with consistency anyway
    result = run_train(
        "convtasnet-whamr.yaml", data_folder, tmp_path / "out", TINY_CONVTASNET, **clean, **{option: True}
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {option} take(s) the mixture for the sum of its targets, but WHAMR!'s mixtures are reverberant "
        f"and its targets anechoic: set {option}=False"
    )
