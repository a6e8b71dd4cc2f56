"""Counting talkers: the loss for mixtures of fewer talkers than outputs, dynamic mixing and manifests of variable
counts, their test scores, and separate.py's decision of which tracks hold a talker (speechsep.inference.counting)."""

import dataclasses
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import butter, sosfiltfilt

import separate
import train
from speechsep.data.dynamic_mixing import talker_count_distribution
from speechsep.data.manifests import separation_dataset
from speechsep.data.recorded_mixtures import write_mixtures
from speechsep.evaluation import metrics
from speechsep.evaluation.metrics import summarize, talker_metrics
from speechsep.inference.counting import CountingRule, count_talkers, pitch_track, talker_tracks
from speechsep.training.budget import TrainingBudget
from speechsep.training.config import ConfigError
from speechsep.training.losses import (
    active_references,
    mixture_gain,
    pit_si_snr_loss,
    relative_level_db,
    talker_loss,
)
from speechsep.training.preflight import check_talker_counts
from tests.helpers import REPO, SAMPLE_RATE, TINY_CONVTASNET, error_lines, make_dataset, read_csv, write_pool
from tests.speech import speech_like
from tests.test_speaker_corpus import write_talkers

RATE = SAMPLE_RATE


def voice(f0: float, seconds: float, seed: int) -> np.ndarray:
    """A speech-like voice at a steady pitch, voiced throughout, RMS 0.1."""
    signal = speech_like(int(seconds * RATE), RATE, np.random.default_rng(seed), f0, 0.0, pauses=False)
    return (0.1 * signal).astype(np.float32)


def split_in_bands(signal: np.ndarray, cutoff_hz: float = 700.0) -> np.ndarray:
    """One voice split between two tracks by frequency, as a 2-talker model splits a single talker: [time, 2]."""
    low = sosfiltfilt(butter(6, cutoff_hz, "low", fs=RATE, output="sos"), signal)
    return np.stack([low, signal - low], axis=1).astype(np.float32)


# ---------------------------------------------------------------- the loss
def test_with_every_reference_active_the_talker_loss_is_the_capped_pit_si_snr_loss():
    torch.manual_seed(0)
    sources = torch.randn(2, 800, 3)
    est = 3.0 * sources[:, :, [2, 0, 1]] + 0.3 * torch.randn(2, 800, 3)  # any common scale; 20 dB SI-SNR
    loss = talker_loss(est, sources, sources.sum(-1), si_snr_max_db=30)
    assert torch.allclose(loss, pit_si_snr_loss(est, sources), atol=1e-4)
    assert 15 < -loss.max() < 25
    assert torch.allclose(talker_loss(sources, sources, sources.sum(-1), si_snr_max_db=30), torch.full((2,), -30.0))


def test_the_estimates_common_scale_is_free_and_their_relative_levels_count():
    torch.manual_seed(0)
    talker = torch.randn(1, 800)
    sources = torch.stack([talker, torch.zeros_like(talker)], dim=-1)
    faint = torch.stack([talker, 0.01 * torch.randn(1, 800)], dim=-1)  # the second output 40 dB down
    for scale in (0.001, 1.0, 1000.0):
        assert talker_loss(scale * faint, sources, talker).item() == pytest.approx(-35.0, abs=0.1)  # (30 + 40) / 2
    assert mixture_gain(5 * faint, talker).item() == pytest.approx(0.2, rel=1e-3)


def test_an_output_left_without_a_talker_scores_its_level_below_the_mixture_down_to_the_floor():
    torch.manual_seed(0)
    talker = torch.randn(1, 800)
    sources = torch.stack([talker, torch.zeros_like(talker)], dim=-1)  # one talker, two outputs
    for level_db, expected in ((-20.0, -20.0), (-60.0, -40.0)):
        quiet = torch.randn(1, 800)
        quiet = quiet * talker.norm() / quiet.norm() * 10 ** (level_db / 20)
        est = torch.stack([quiet, talker], dim=-1)  # the talker on the second output, exactly
        loss = talker_loss(est, sources, talker, si_snr_max_db=30, silence_floor_db=40)
        assert loss.item() == pytest.approx(-(30 - expected) / 2, abs=0.1)


def test_an_output_that_is_exactly_silent_has_a_finite_loss_and_gradient():
    talker = torch.randn(2, 800)
    sources = torch.stack([talker, torch.zeros_like(talker)], dim=-1)
    est = torch.stack([talker * 0.5, torch.zeros_like(talker)], dim=-1).requires_grad_()
    loss = talker_loss(est, sources, talker).mean()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(est.grad).all()


def test_active_references_ignore_padding_and_relative_level_is_bounded_by_the_floor():
    sources = torch.zeros(2, 100, 2)
    sources[0, :, 0] = 1
    sources[1, 90:, 1] = 1  # only in the padding of example 1 (true length 50)
    assert active_references(sources, torch.tensor([1.0, 0.5])).tolist() == [[True, False], [False, False]]
    est = torch.zeros(1, 100, 1)
    assert relative_level_db(est, torch.ones(1, 100), floor_db=30).item() == pytest.approx(-30.0)


# ---------------------------------------------------------------- talker counts: configuration
@pytest.mark.parametrize(
    "counts, weights, message",
    [
        ([0, 1], None, "talker_counts [0, 1] must be distinct counts from 1 to num_spks=3"),
        ([1, 4], None, "talker_counts [1, 4] must be distinct counts from 1 to num_spks=3"),
        ([2, 2], None, "talker_counts [2, 2] must be distinct counts from 1 to num_spks=3"),
        ([1, 2, 3], [1, 1], "talker_count_weights has 2 values for the 3 talker_counts [1, 2, 3]: one each"),
        ([1, 2], [1, -1], "talker_count_weights [1, -1] must be finite, non-negative and not all zero"),
        ([1, 2], [0, 0], "talker_count_weights [0, 0] must be finite, non-negative and not all zero"),
        (None, [1, 2], "talker_count_weights goes with talker_counts"),
        ("12", None, "talker_counts must be a list of whole numbers of talkers, got 12"),
    ],
)
def test_bad_talker_counts_are_one_line_each(counts, weights, message):
    with pytest.raises(ConfigError) as err:
        check_talker_counts({"num_spks": 3, "talker_counts": counts, "talker_count_weights": weights})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_talker_counts_need_a_talker_loss_and_no_mixture_consistency():
    values = {"num_spks": 3, "talker_counts": [1, 2, 3]}
    with pytest.raises(ConfigError, match="talker_counts needs a talker_loss"):
        check_talker_counts(values)
    with pytest.raises(ConfigError, match="test_mixture_consistency shares"):
        check_talker_counts({**values, "talker_loss": talker_loss, "test_mixture_consistency": True})
    assert talker_count_distribution(3, [1, 3], [1, 3]) == ([1, 3], [0.25, 0.75])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"talker_count_warmup_weights": [0, 1]}, "talker_count_warmup_weights has 2 values for the 3 talker_counts"),
        ({"talker_count_warmup_weights": [0, 0, 0]}, "talker_count_warmup_weights [0, 0, 0] must be finite"),
        ({"talker_count_warmup_share": 1.5}, "talker_count_warmup_share must be a share of the training from 0 to 1"),
        ({"talker_count_warmup_share": None}, "talker_count_warmup_weights need a talker_count_warmup_share"),
        ({"talker_count_warmup_share": "abc", "talker_counts": None, "talker_loss": None}, "talker_count_warmup_share"),
        ({"dynamic_mixing": False}, "talker_count_warmup_weights are dynamic mixing's draws"),
        ({"talker_counts": None, "talker_loss": None}, "talker_count_warmup_weights goes with talker_counts"),
    ],
)
def test_a_bad_talker_count_warmup_is_one_line(override, message):
    values = {"num_spks": 3, "talker_counts": [1, 2, 3], "talker_loss": talker_loss, "dynamic_mixing": True}
    values |= {"talker_count_warmup_weights": [0, 1, 1], "talker_count_warmup_share": 0.6}
    check_talker_counts(values)
    with pytest.raises(ConfigError) as err:
        check_talker_counts({**values, **override})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_warmup_weights_hold_over_the_first_share_of_the_training_and_never_in_the_last_epoch():
    class Pool:  # the training set: what it was told to draw
        weights = "unset"

        def set_talker_count_weights(self, weights):
            self.weights = weights

    hparams = SimpleNamespace(talker_count_warmup_weights=[0, 1, 1], talker_count_warmup_share=0.6)
    hparams.talker_counts, hparams.talker_count_weights, hparams.N_epochs = [1, 2, 3], [1, 2, 3], 10
    brain = SimpleNamespace(hparams=hparams, budget=TrainingBudget(), train_dataset=Pool())

    def drawn(epochs):
        weights = []
        for epoch in range(1, epochs + 1):
            train.Separation.set_talker_count_weights(brain, epoch)
            weights.append(brain.train_dataset.weights)
        return weights

    assert drawn(10) == [[0, 1, 1]] * 6 + [[1, 2, 3]] * 4  # epoch 7's middle is 65% in
    hparams.N_epochs = 2
    assert drawn(2) == [[0, 1, 1], [1, 2, 3]]
    hparams.talker_count_warmup_share, hparams.N_epochs = 1.0, 3
    assert drawn(3) == [[0, 1, 1], [0, 1, 1], [1, 2, 3]]  # the last epoch draws every count, whatever the share
    hparams.talker_count_warmup_share, hparams.N_epochs = 0.6, 20
    brain.budget = TrainingBudget(minutes=10, spent_seconds=5.9 * 60)  # a budget: its share spent decides
    assert drawn(1) == [[0, 1, 1]]
    brain.budget = TrainingBudget(minutes=10, spent_seconds=5 * 60, epoch_seconds=[120.0])  # middle at 60%
    assert drawn(1) == [[1, 2, 3]]
    brain.budget = TrainingBudget(minutes=10, spent_seconds=60, epoch_seconds=[6.0])  # N_epochs ends it first
    hparams.N_epochs = 10
    assert drawn(8) == [[0, 1, 1]] * 6 + [[1, 2, 3]] * 2
    brain.budget = TrainingBudget(minutes=10, spent_seconds=60, epoch_seconds=[300.0])  # the last epoch that fits
    hparams.talker_count_warmup_share = 1.0
    assert drawn(1) == [[1, 2, 3]]
    hparams.talker_count_warmup_weights = None  # no warmup: the dataset is left as it is
    brain.train_dataset = Pool()
    assert drawn(1) == ["unset"]


def test_dynamic_mixing_draws_with_the_weights_it_is_given_from_then_on(tmp_path):
    dataset = make_dataset(tmp_path, num_spks=3, epoch_len=40, talker_counts=[1, 2, 3])
    dataset.set_talker_count_weights([0, 1, 1])
    assert {int((np.abs(dataset.draw(i).sources).max(axis=1) > 0).sum()) for i in range(40)} == {2, 3}
    dataset.set_talker_count_weights(None)  # all alike again
    assert 1 in {int((np.abs(dataset.draw(i).sources).max(axis=1) > 0).sum()) for i in range(40)}


# ---------------------------------------------------------------- talker counts: data
def test_dynamic_mixing_draws_the_talker_count_of_each_mixture_and_leaves_the_other_sources_silent(tmp_path):
    dataset = make_dataset(tmp_path, num_spks=3, epoch_len=60, talker_counts=[1, 2, 3], talker_count_weights=[2, 1, 1])
    counts = []
    for index in range(60):
        mixture = dataset.draw(index)
        active = np.abs(mixture.sources).max(axis=1) > 0
        count = int(active.sum())
        assert active[:count].all() and not active[count:].any()  # the talkers first, then silence
        assert np.array_equal(mixture.mixture, mixture.sources[0] + mixture.sources[1] + mixture.sources[2])
        counts.append(count)
    assert set(counts) == {1, 2, 3} and counts.count(1) > counts.count(3)


def test_without_talker_counts_dynamic_mixing_draws_the_mixtures_it_always_drew(tmp_path):
    plain = make_dataset(tmp_path / "a", num_spks=2)
    fixed = make_dataset(tmp_path / "b", num_spks=2, talker_counts=[2])
    for index in range(3):
        assert np.array_equal(plain.draw(index).mixture, fixed.draw(index).mixture)


def test_manifests_may_list_fewer_sources_than_outputs_when_the_model_counts_talkers(tmp_path):
    signals = {name: voice(150 + 50 * k, 0.5, k) for k, name in enumerate(("mix", "s1", "s2"))}
    for name, signal in signals.items():
        sf.write(tmp_path / f"{name}.wav", signal, RATE, subtype="FLOAT")
    rows = ["ID,mix_wav,s1_wav,s2_wav", f"a,{tmp_path}/mix.wav,{tmp_path}/s1.wav,{tmp_path}/s2.wav"]
    rows.append(f"b,{tmp_path}/mix.wav,{tmp_path}/s1.wav,")  # one talker: s2 left empty
    (tmp_path / "two.csv").write_text("\n".join(rows) + "\n")
    dataset = separation_dataset(str(tmp_path / "two.csv"), str(tmp_path), num_spks=3, min_talkers=1)
    by_id = {example["id"]: example for example in dataset}
    assert by_id["a"]["s3_sig"].abs().max() == 0 and by_id["b"]["s2_sig"].abs().max() == 0
    assert by_id["a"]["s2_sig"].shape == by_id["a"]["mix_sig"].shape
    with pytest.raises(Exception, match="lacks column"):
        separation_dataset(str(tmp_path / "two.csv"), str(tmp_path), num_spks=3)  # a fixed-count model: refused


def test_held_out_mixtures_hold_each_talker_count_in_turn(tmp_path):
    pool = write_pool(tmp_path / "pool", num_speakers=4)
    speakers = {folder.name: sorted(folder.rglob("*.wav")) for folder in pool.iterdir() if folder.is_dir()}
    manifest = write_mixtures(speakers, tmp_path / "out", "test", 6, RATE, num_spks=3, seed=0, talker_counts=[1, 2, 3])
    lines = manifest.read_text().splitlines()[1:]
    silent = [[not sf.read(path)[0].any() for path in line.split(",")[3:6]] for line in lines]
    assert [3 - sum(row) for row in silent] == [1, 2, 3, 1, 2, 3]


# ---------------------------------------------------------------- counting
def test_two_voices_at_different_pitches_are_two_talkers_and_one_voice_split_in_two_is_one():
    two = np.stack([voice(110, 3, 0), voice(190, 3, 1)], axis=1)
    count = count_talkers(two, two.sum(axis=1), RATE)
    assert count.talkers == 2 and count.tracks == [0, 1]

    single = voice(140, 3, 2)
    split = split_in_bands(single)
    count = count_talkers(split, single, RATE)
    assert count.talkers == 1 and len(count.tracks) == 1
    copy = count.stretches[0].holds[1 - count.tracks[0]]
    assert copy == f"copy of {count.tracks[0] + 1}"
    written = talker_tracks(torch.from_numpy(split), count)  # the copy is given back: the whole voice
    assert written.shape == (len(single), 1)
    assert np.allclose(written[:, 0].numpy(), single, atol=1e-5)


def test_a_quiet_track_holds_no_talker_and_the_levels_are_reported():
    talker = voice(150, 2, 0)
    est = np.stack([talker, 0.003 * voice(260, 2, 1), np.zeros_like(talker)], axis=1)
    count = count_talkers(est, talker, RATE)
    assert count.talkers == 1 and count.stretches[0].holds == ["talker", "silence", "silence"]
    record = count.record()
    assert record["talkers"] == 1 and record["level_db"][0] == pytest.approx(0, abs=0.1)
    assert record["level_db"][2] is None  # an exact silence: JSON has no -inf
    json.dumps(record)


def test_on_a_long_input_a_talker_who_stops_is_kept_and_silenced_only_where_it_stopped():
    first, second = voice(120, 12, 0), voice(210, 12, 1)
    second[8 * RATE :] = 0  # the second talker leaves after 8 s
    est = np.stack([first, second], axis=1)
    count = count_talkers(est, est.sum(axis=1), RATE)
    assert [stretch.talkers for stretch in count.stretches] == [2, 2, 1]
    assert count.talkers == 2 and count.tracks == [0, 1]
    written = talker_tracks(torch.from_numpy(est), count)
    assert torch.equal(written[: 8 * RATE - RATE], torch.from_numpy(est[: 8 * RATE - RATE]))


def whisper(seconds: float, seed: int) -> np.ndarray:
    """Unvoiced speech-like noise: bursts of 0.1-0.4 s with pauses between them, no pitch to read, RMS about 0.1."""
    rng = np.random.default_rng(seed)
    gate = np.concatenate([np.full(int(rng.uniform(0.1, 0.4) * RATE), on) for on in [1.0, 0.0] * 20])
    return (0.14 * rng.standard_normal(int(seconds * RATE)) * gate[: int(seconds * RATE)]).astype(np.float32)


def test_where_no_pitch_can_be_read_the_energy_envelopes_tell_one_voice_from_two():
    single = whisper(3, 0)
    count = count_talkers(split_in_bands(single), single, RATE)  # one voice's pieces pause together
    assert count.talkers == 1 and count.stretches[0].holds[1 - count.tracks[0]].startswith("copy of")
    two = np.stack([whisper(3, 1), whisper(3, 2)], axis=1)  # two talkers pause at other times
    assert count_talkers(two, two.sum(axis=1), RATE).talkers == 2


def test_two_talkers_taking_turns_after_digital_silence_stay_two():
    silence, first, second = np.zeros(2 * RATE, np.float32), voice(140, 1, 0), voice(230, 1, 1)
    talker_a = np.concatenate([silence, first, np.zeros_like(second)])
    talker_b = np.concatenate([silence, np.zeros_like(first), second])
    crosstalk = 10 ** (-35 / 20)  # what a separator leaves of the other talker
    est = np.stack([talker_a + crosstalk * talker_b, talker_b + crosstalk * talker_a], axis=1)
    count = count_talkers(est, talker_a + talker_b, RATE)  # the shared silence does not make them alike
    assert count.talkers == 2 and count.stretches[0].holds == ["talker", "talker"]


def test_a_dc_offset_is_no_talker_and_the_levels_reported_agree_with_the_decision():
    talker = voice(150, 3, 0)
    est = np.stack([talker, 0.5 + 1e-4 * voice(260, 3, 1)], axis=1)  # a track of DC and a trace of a voice
    count = count_talkers(est, est.sum(axis=1), RATE)
    assert count.talkers == 1 and count.stretches[0].holds == ["talker", "silence"]
    assert count.level_db()[1] < -60 and count.level_db()[0] == pytest.approx(0, abs=0.1)
    assert count.record()["level_db"][1] == pytest.approx(count.stretches[0].level_db[1], abs=0.1)


def test_pitch_track_finds_a_steady_pitch_and_no_voicing_in_silence():
    pitch, voiced = pitch_track(voice(160, 1, 0), RATE)
    assert voiced.mean() > 0.8 and np.median(pitch[voiced]) == pytest.approx(160, rel=0.05)
    assert not pitch_track(np.zeros(RATE, dtype=np.float32), RATE)[1].any()


def test_bad_counting_rules_are_refused():
    with pytest.raises(ValueError, match="min_level_db"):
        CountingRule(min_level_db=3)
    with pytest.raises(ValueError, match="min_copy_score"):
        CountingRule(min_copy_score=0)


# ---------------------------------------------------------------- test scores
def test_test_scores_count_only_the_talkers_and_report_true_and_found_counts():
    talkers = [voice(110, 2, 0), voice(200, 2, 1)]
    sources = torch.zeros(2, 2 * RATE, 3)
    sources[0, :, 0] = torch.from_numpy(talkers[0])  # one talker
    sources[1, :, 0], sources[1, :, 1] = torch.from_numpy(talkers[0]), torch.from_numpy(talkers[1])
    mixture = sources.sum(-1)
    est = sources[:, :, [2, 0, 1]] + 1e-3 * torch.randn(2, 2 * RATE, 3)  # the talkers on other outputs
    rows = metrics.test_scores(
        mixture, sources, est, torch.ones(2), ["one", "two"], variable_talkers=True, sample_rate=RATE
    )
    assert [row["talkers"] for row in rows] == [1, 2] and [row["talkers_found"] for row in rows] == [1, 2]
    assert rows[0]["si-snr"] > 25 and math.isnan(rows[0]["si-snr_i"])  # a lone talker: no improvement to measure
    assert rows[1]["si-snr_i"] > 20 and math.isnan(rows[1]["si-snr_s3"])
    assert rows[0]["silent_output_db"] < -30 and rows[0]["perm"][0] == 1
    summary = summarize(rows)
    assert summary["si-snr_i"]["count"] == 1 and summary["si-snr"]["count"] == 2
    with pytest.raises(ValueError, match="sample_rate"):
        talker_metrics(mixture, sources, est)


# ---------------------------------------------------------------- separate.py
def separated_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


class BandSplitter:
    """A stand-in for a 2-output model that splits whatever it hears into two frequency bands, as a separator
    trained on two talkers splits a single voice."""

    def __init__(self):
        from types import SimpleNamespace

        self.hparams = SimpleNamespace(sample_rate=RATE, num_spks=2)

    def separate_batch(self, mixture):
        return torch.from_numpy(np.stack([split_in_bands(m.numpy()) for m in mixture]))


@pytest.fixture
def band_splitter(monkeypatch):
    monkeypatch.setattr(separate, "load_separator", lambda *args, **kwargs: BandSplitter())


def test_separate_writes_one_track_for_one_talker_and_a_json_line_per_input(band_splitter, tmp_path, capsys):
    sf.write(tmp_path / "alone.wav", voice(140, 3, 0), RATE)
    out = tmp_path / "out"
    assert separate.main(["--model", "m", "--output-dir", str(out), "--quiet", str(tmp_path / "alone.wav")]) == 0
    (record,) = separated_lines(capsys)
    assert record["talkers"] == 1 and len(record["level_db"]) == 2
    assert [track["file"] for track in record["tracks"]] == [str(out / "alone_s1.wav")]
    assert sorted(p.name for p in out.iterdir()) == ["alone_s1.wav"]
    written = sf.read(out / "alone_s1.wav")[0]
    assert np.corrcoef(written, voice(140, 3, 0))[0, 1] > 0.99  # the whole voice, not a band of it

    assert (
        separate.main(
            [
                "--model",
                "m",
                "--output-dir",
                str(out / "all"),
                "--keep-all-tracks",
                "--quiet",
                str(tmp_path / "alone.wav"),
            ]
        )
        == 0
    )
    (record,) = separated_lines(capsys)
    assert record["talkers"] == 1 and len(record["tracks"]) == 2


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--keep-all-tracks", "--talkers", "1"],
            "error: --keep-all-tracks writes every output and --talkers 1 only 1: give one",
        ),
        (["--talkers", "3"], "error: --talkers 3: this model has 2 outputs, so at most 2"),
        (["--talkers", "0"], "error: --talkers must be at least 1, got 0"),
        (
            ["--stream", "--keep-all-tracks"],
            "error: --stream writes every output as it comes, without counting talkers",
        ),
    ],
)
def test_contradicting_track_options_are_one_line_each(band_splitter, tmp_path, caplog, arguments, message):
    sf.write(tmp_path / "alone.wav", voice(140, 1, 0), RATE)
    code = separate.main(
        ["--model", "m", "--output-dir", str(tmp_path / "out"), *arguments, str(tmp_path / "alone.wav")]
    )
    assert code == 2
    (line,) = error_lines(caplog)
    assert line.startswith(message)


# ---------------------------------------------------------------- train.py with hparams/demo-talkers.yaml
def demo_talkers_command(tmp_path, *extra: str) -> list[str]:
    """A tiny run of hparams/demo-talkers.yaml on recordings of 8 talkers (valid/test talkers split from them)."""
    source = write_talkers(tmp_path / "recordings", num_talkers=10, seconds=1.0)
    values = {
        "source_folder": source,
        "valid_source_folder": "null",
        "test_source_folder": "null",
        "output_folder": tmp_path / "run",
        **TINY_CONVTASNET,
        "N_epochs": 1,
        "batch_size": 2,
        "dm_epoch_len": 8,
        "training_signal_len": 4000,
        "train_budget_minutes": "null",
        "valid_mixtures": 3,
        "test_mixtures": 6,
        "valid_speakers": 0.3,
        "test_speakers": 0.3,
        "min_speaker_seconds": 1,
        "precision": "fp32",
    }
    options = [f"--{key}={value}" for key, value in values.items()]
    return [sys.executable, "train.py", "hparams/demo-talkers.yaml", *options, "--noprogressbar", *extra]


def test_a_model_for_one_to_three_talkers_trains_and_reports_true_and_found_counts(tmp_path):
    result = subprocess.run(demo_talkers_command(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(tmp_path / "run" / "test_results.csv")
    assert [int(row["talkers"]) for row in rows] == [1, 2, 3, 1, 2, 3]
    assert all(row["talkers_found"] in ("0", "1", "2", "3") for row in rows)
    assert [row["silent_output_db"] == "nan" for row in rows] == [False, False, True] * 2
    summary = json.loads((tmp_path / "run" / "test_results_summary.json").read_text())
    assert summary["si-snr_i"]["count"] == 4  # the one-talker mixtures have no improvement to score
    # the curriculum is applied: its one epoch is the last, which draws every count
    assert "Epoch 1: talker counts [1, 2, 3] drawn with weights all alike" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("--talker_counts=[1,2,4]", "talker_counts [1, 2, 4] must be distinct counts from 1 to num_spks=3"),
        ("--talker_count_weights=[1,1]", "talker_count_weights has 2 values for the 3 talker_counts [1, 2, 3]"),
        ("--num_spks=2", "talker_counts [1, 2, 3] must be distinct counts from 1 to num_spks=2"),
    ],
)
def test_train_refuses_bad_talker_counts_in_one_line(tmp_path, override, message):
    result = subprocess.run(
        demo_talkers_command(tmp_path, override), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_silent_input_gets_no_track_and_an_overwrite_removes_its_earlier_ones(
    band_splitter, tmp_path, capsys, caplog
):
    sf.write(tmp_path / "talk.wav", voice(140, 2, 0), RATE)
    out = tmp_path / "out"
    arguments = ["--model", "m", "--output-dir", str(out), "--overwrite", str(tmp_path / "talk.wav")]
    assert separate.main([*arguments[:-1], "--keep-all-tracks", arguments[-1]]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["talk_s1.wav", "talk_s2.wav"]
    sf.write(tmp_path / "talk.wav", np.zeros(2 * RATE), RATE)
    capsys.readouterr()
    assert separate.main(arguments) == 0
    (record,) = separated_lines(capsys)
    assert record["talkers"] == 0 and record["tracks"] == [] and record["level_db"] == [None, None]
    assert list(out.iterdir()) == []
    assert "no output holds a talker (silence?): no track written" in caplog.text


def test_a_stretch_of_near_silence_does_not_make_its_noise_a_talker_and_levels_weigh_by_energy():
    talker = voice(150, 4, 0)
    noise = 1e-4 * np.random.default_rng(0).standard_normal((4 * RATE, 2)).astype(np.float32)  # 60 dB down
    est = np.concatenate([np.stack([talker, np.zeros_like(talker)], axis=1), noise])  # then 4 s of noise alone
    count = count_talkers(est, est.sum(axis=1), RATE)
    assert [stretch.holds for stretch in count.stretches] == [["talker", "silence"], ["silence", "silence"]]
    assert count.talkers == 1 and count.tracks == [0]
    assert count.level_db()[1] < -40  # the noise track, by energy over the whole input


def test_where_a_track_turns_from_a_copy_into_a_talker_the_tracks_fade_and_sum_to_what_they_held():
    first = voice(140, 4, 0)
    second = np.concatenate([split_in_bands(voice(140, 4, 1))[:, 1], voice(230, 4, 2)])  # a copy, then a talker
    est = np.stack([np.concatenate([first, voice(140, 4, 3)]), second], axis=1)
    est[: 4 * RATE, 0] = split_in_bands(first)[:, 0]
    est[: 4 * RATE, 1] = split_in_bands(first)[:, 1]  # the first stretch: one voice split in two
    count = count_talkers(est, est.sum(axis=1), RATE)
    first_stretch = count.stretches[0].holds
    kept = first_stretch.index("talker")  # whichever band is louder
    assert first_stretch[1 - kept] == f"copy of {kept + 1}" and count.stretches[1].holds == ["talker", "talker"]
    written = talker_tracks(torch.from_numpy(est), count).numpy()
    assert np.allclose(written.sum(axis=1), est.sum(axis=1), atol=1e-5)  # nothing lost or doubled at the fade
    assert np.allclose(written[: 3 * RATE, kept], first[: 3 * RATE], atol=1e-5)  # the whole voice on one track
    assert not written[: 3 * RATE, 1 - kept].any()


def test_talkers_selects_the_loudest_outputs_uncounted(band_splitter, tmp_path, capsys):
    sf.write(tmp_path / "alone.wav", voice(140, 2, 0), RATE)
    out = tmp_path / "out"
    assert separate.main(["--model", "m", "--output-dir", str(out), "--talkers", "1", str(tmp_path / "alone.wav")]) == 0
    (record,) = separated_lines(capsys)
    loudest = int(np.argmax(record["level_db"])) + 1
    assert [track["output"] for track in record["tracks"]] == [loudest]


def test_scores_of_a_mixture_whose_middle_reference_is_silent_keep_each_reference_in_its_column():
    talkers = [voice(110, 2, 0), voice(200, 2, 1)]
    sources = torch.zeros(1, 2 * RATE, 3)
    sources[0, :, 0], sources[0, :, 2] = torch.from_numpy(talkers[0]), torch.from_numpy(talkers[1])
    est = sources[:, :, [1, 2, 0]] + 1e-3 * torch.randn(1, 2 * RATE, 3)  # output 0 silent, 1 -> ref 2, 2 -> ref 0
    (row,) = talker_metrics(sources.sum(-1), sources, est, sample_rate=RATE)
    assert row["perm"] == (2, 0, 1)
    assert row["si-snr_s1"] > 30 and math.isnan(row["si-snr_s2"]) and row["si-snr_s3"] > 30


def test_manifests_written_before_min_talkers_are_reused_as_they_are(tmp_path):
    import prepare_data

    options = prepare_data.PrepareOptions("d", "custom", 2, 8000, "min", "360", False, False)
    stored = {k: v for k, v in dataclasses.asdict(options).items() if k != "min_talkers"}  # an older version's
    (tmp_path / "prepare_options.json").write_text(json.dumps({**stored, "tree": {"audio_files": 0}}))
    assert prepare_data._manifests_are_current(tmp_path / "prepare_options.json", options, {"audio_files": 0})


def test_a_closed_stdout_is_one_error_line_and_every_input_is_still_separated(tmp_path):
    for name in ("a", "b", "c"):
        sf.write(tmp_path / f"{name}.wav", voice(140, 1, 0), RATE)
    script = (
        "import sys, separate; from tests.test_talker_counting import BandSplitter; "
        "separate.load_separator = lambda *args, **kwargs: BandSplitter(); sys.exit(separate.main())"
    )
    command = [sys.executable, "-c", script, "--model", "m", "--output-dir", str(tmp_path / "out"), str(tmp_path)]
    with open("/dev/full", "w") as full:
        result = subprocess.run(command, cwd=REPO, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: stdout failed (No space left on device): no more JSON lines; the tracks are still written"
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_s1.wav", "b_s1.wav", "c_s1.wav"]


@pytest.mark.parametrize("empty", ["mix_wav", "s1_wav"])
def test_the_columns_that_must_hold_a_file_may_not_be_left_empty(tmp_path, empty):
    sf.write(tmp_path / "x.wav", voice(150, 0.5, 0), RATE)
    row = {"ID": "a", "mix_wav": f"{tmp_path}/x.wav", "s1_wav": f"{tmp_path}/x.wav", "s2_wav": ""}
    row[empty] = ""
    (tmp_path / "m.csv").write_text(",".join(row) + "\n" + ",".join(row.values()) + "\n")
    with pytest.raises(Exception, match=f"{empty} file not found"):
        separation_dataset(str(tmp_path / "m.csv"), str(tmp_path), num_spks=3, min_talkers=1)


@pytest.mark.parametrize(
    "counts, weights, message",
    [
        (2, None, "talker_counts must be a list"),
        ([1, 2], "ab", "talker_count_weights must be a list"),
        ([1, 2], [1e308, 1e308], "must be finite, non-negative and not all zero"),
    ],
)
def test_talker_counts_that_are_not_lists_or_whose_weights_overflow_are_one_line(counts, weights, message):
    with pytest.raises(ConfigError, match=message):
        check_talker_counts({"num_spks": 3, "talker_counts": counts, "talker_count_weights": weights})
