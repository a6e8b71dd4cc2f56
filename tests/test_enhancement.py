"""Speech enhancement as a one-source task: the loss, the metrics, the test-time options and the config checks."""

import math

import pytest
import torch
from pesq import pesq

from speechsep.data.layouts import DataPreparationError
from speechsep.evaluation.metrics import separation_metrics
from speechsep.inference.separation import separate_shifted
from speechsep.training.config import ConfigError, record_yaml, resolved_values
from speechsep.training.losses import pairwise_si_snr, pit_si_snr_loss
from speechsep.training.preflight import check_num_spks, check_rebuilt_mixtures, check_same_experiment, check_values
from tests.corpus_trees import make_custom
from tests.helpers import REPO, make_batch


def one_speaker_in_noise(seconds=2.0, seed=0):
    """speech [1, time, 1] and the noisy mixture [1, time] of it with white noise."""
    speech = make_batch(batch_size=1, num_spks=1, seconds=seconds, seed=seed).s1_sig.data.unsqueeze(-1)
    noise = 0.05 * torch.randn(speech.shape[:2], generator=torch.Generator().manual_seed(seed))
    return speech, speech[..., 0] + noise


def test_one_source_loss_is_minus_the_si_snr_of_the_estimate():
    speech, mixture = one_speaker_in_noise()
    loss = pit_si_snr_loss(mixture.unsqueeze(-1), speech)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(-pairwise_si_snr(mixture.unsqueeze(-1), speech).item())


def test_one_source_metrics_score_the_estimate_and_its_improvement_over_the_noisy_mixture():
    speech, mixture = one_speaker_in_noise()
    estimate = speech + 0.01 * torch.randn(speech.shape, generator=torch.Generator().manual_seed(1))
    (row,) = separation_metrics(mixture, speech, estimate, snt_ids=["a"], compute_stoi=True, sample_rate=8000)
    assert row["perm"] == (0,) and row["si-snr"] == row["si-snr_s1"] and row["stoi"] == row["stoi_s1"]
    assert row["si-snr_i"] > 5 and row["sdr_i"] > 5 and 0 < row["stoi_i"] < row["stoi"] <= 1
    (baseline,) = separation_metrics(mixture, speech, mixture.unsqueeze(-1))
    assert baseline["si-snr_i"] == pytest.approx(0, abs=1e-9) and baseline["sdr_i"] == pytest.approx(0, abs=1e-9)


def test_test_shifts_average_one_source_estimates():
    speech, mixture = one_speaker_in_noise()
    estimate = separate_shifted(lambda m: 0.5 * m.unsqueeze(-1), mixture, shifts=4, hop=8)
    assert estimate.shape == (1, mixture.shape[1], 1)
    torch.testing.assert_close(estimate[..., 0], mixture, atol=1e-4, rtol=1e-4)  # brought to the mixture's level


def test_mixture_consistency_is_refused_for_enhancement_with_one_line():
    values = {"task": "enhancement", "num_spks": 1, "use_wham_noise": True, "test_mixture_consistency": True}
    with pytest.raises(ConfigError, match="^test_mixture_consistency makes one source's estimate the mixture itself"):
        check_values(values)


@pytest.mark.parametrize(
    "num_spks, task, message",
    [
        (2, "enhancement", "num_spks is 2, task=enhancement has one target per mixture: set num_spks=1"),
        (3, "enhancement_both", "num_spks is 3, task=enhancement_both has one target per mixture: set num_spks=1"),
        (1, "separation", "num_spks is 1, separation needs at least 2; for speech enhancement .*set task=enhancement"),
        (1, "denoise", "task must be one of \\['separation', 'enhancement', 'enhancement_both'\\], got 'denoise'"),
    ],
)
def test_speaker_count_must_fit_the_task(num_spks, task, message):
    with pytest.raises(DataPreparationError, match=f"^{message}"):
        check_num_spks(num_spks, task)
    check_num_spks(1, "enhancement")
    check_num_spks(1, "enhancement_both")
    check_num_spks(3, "separation")


def test_unknown_task_is_a_config_error():
    with pytest.raises(
        ConfigError, match="^task is 'enh_single'; expected separation, enhancement or enhancement_both$"
    ):
        check_values({"task": "enh_single"})


def test_dynamic_mixing_is_refused_for_the_clean_mixture_target_with_one_line():
    with pytest.raises(ConfigError, match="^dynamic_mixing makes one target per speaker, not task=enhancement_both's"):
        check_values({"task": "enhancement_both", "num_spks": 1, "dynamic_mixing": True})
    check_values({"task": "enhancement", "num_spks": 1, "dynamic_mixing": True})


def test_resuming_a_run_with_another_task_is_refused(tmp_path):
    config = REPO / "hparams" / "sepformer-wham-enhancement.yaml"
    options = {"data_folder": "/data/wham", "output_folder": str(tmp_path)}
    (tmp_path / "hyperparams.yaml").write_text(record_yaml(config, options))
    (tmp_path / "save" / "CKPT+1").mkdir(parents=True)
    record = record_yaml(config, {**options, "task": "enhancement_both"})
    with pytest.raises(
        ConfigError, match="holds a run with another model or data \\(task: enhancement -> enhancement_both\\)"
    ):
        check_same_experiment(resolved_values(record), record, test_only=False)
    check_same_experiment(resolved_values(record_yaml(config, options)), record, test_only=False)


def test_pesq_of_clean_speech_is_high_and_of_the_noisy_mixture_lower():
    speech, mixture = one_speaker_in_noise()
    (row,) = separation_metrics(mixture, speech, speech.clone(), compute_pesq=True, sample_rate=8000)
    assert row["pesq"] == row["pesq_s1"] > 4.0  # clean against itself: the top of the narrowband scale
    assert 1.0 <= row["pesq"] - row["pesq_i"] < row["pesq"] - 1.0  # the mixture's, over a point lower
    assert "pesq" not in separation_metrics(mixture, speech, speech.clone())[0]


def test_pesq_is_wideband_at_16_khz_and_nan_where_it_cannot_score():
    speech, mixture = one_speaker_in_noise(seconds=1.0)  # made at 8 kHz, scored as 16 kHz audio
    (row,) = separation_metrics(mixture, speech, mixture.unsqueeze(-1), compute_pesq=True, sample_rate=16000)
    assert row["pesq"] == pytest.approx(
        pesq(16000, speech[0, :, 0].double().numpy(), mixture[0].double().numpy(), "wb")
    )
    short = separation_metrics(mixture[:, :800], speech[:, :800], speech[:, :800], compute_pesq=True, sample_rate=8000)
    assert math.isnan(short[0]["pesq"])  # 0.1 s: too short for PESQ


def test_pesq_at_another_sample_rate_is_refused_with_one_line():
    with pytest.raises(ConfigError, match="^compute_pesq needs sample_rate 8000 or 16000 .*, not 44100$"):
        check_values({"compute_pesq": True, "sample_rate": 44100})
    check_values({"compute_pesq": True, "sample_rate": 16000})


def test_speed_perturbation_is_refused_for_enhancement_on_a_custom_tree_without_noise(tmp_path):
    """Rebuilding the mixture from its one target would leave the clean target as the input."""
    data_folder = make_custom(tmp_path, num_spks=1, per_split=1)
    values = {"data_folder": data_folder, "task": "enhancement", "use_speedperturb": True, "skip_prep": False}
    values.update(dynamic_mixing=False, dm_rooms=None)
    with pytest.raises(ConfigError, match="^use_speedperturb take.* custom tree has no train/noise/"):
        check_rebuilt_mixtures(values, test_only=False)
    check_rebuilt_mixtures({**values, "task": "separation"}, test_only=False)
    check_rebuilt_mixtures({**values, "use_speedperturb": False}, test_only=False)
    (data_folder / "train" / "noise").mkdir()
    check_rebuilt_mixtures(values, test_only=False)
