"""separate.py and export.py on a tiny ConvTasNet trained by train.py: tracks, options, bad inputs, cards, chunking."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.inference.separation import SepformerSeparation

import export
import separate
from speechsep.evaluation.metrics import pit_si_snr
from speechsep.inference.model_folder import load_separator
from speechsep.inference.separation import separate_long
from speechsep.training.config import load_hparams
from tests.corpus_trees import make_wsj0mix
from tests.helpers import (
    REPO,
    SAMPLE_RATE,
    TINY_CONVTASNET,
    error_lines,
    two_speaker_recording,
    write_recordings,
)
from tests.helpers import write_recording as write


@pytest.fixture(scope="module")
def convtasnet_run(tmp_path_factory) -> Path:
    """A tiny ConvTasNet run folder written by train.py (hyperparams.yaml, save/CKPT+*)."""
    root = tmp_path_factory.mktemp("convtasnet")
    data_folder = make_wsj0mix(root / "data", per_split=4)
    options = {"N_epochs": 24, "lr": 0.01, "batch_size": 2, "save_audio": False, **TINY_CONVTASNET}
    command = [
        sys.executable,
        "train.py",
        "hparams/convtasnet.yaml",
        f"--data_folder={data_folder}",
        f"--output_folder={root / 'run'}",
        "--noprogressbar",
        *[f"--{k}={v}" for k, v in options.items()],
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


def recipe_estimates(run: Path, mixture: torch.Tensor) -> torch.Tensor:
    """What train.py's `Separation.separate` gives with the run's own config and best checkpoint."""
    from train import Separation

    hparams = load_hparams(run / "hyperparams.yaml")
    hparams["checkpointer"].recover_if_possible(max_key="si-snr")
    brain = Separation(modules=hparams["modules"], hparams=hparams, run_opts={"device": "cpu"})
    brain.modules.eval()
    with torch.no_grad():
        return brain.separate(mixture)


@pytest.mark.parametrize("run_fixture", [pytest.param("convtasnet_run", marks=pytest.mark.slow), "sepformer_run"])
def test_exported_model_loads_in_speechbrain_and_matches_the_recipe_model(request, tmp_path, run_fixture):
    run = request.getfixturevalue(run_fixture)
    assert export.main([str(run), str(tmp_path / "export")]) == 0

    model = SepformerSeparation.from_hparams(source=str(tmp_path / "export"), savedir=str(tmp_path / "savedir"))
    mixture = torch.randn(2, 3000)
    with torch.no_grad():
        exported = model.separate_batch(mixture)
    assert exported.shape == (2, 3000, 2)
    assert (exported - recipe_estimates(run, mixture)).abs().max() < 1e-5


@pytest.mark.slow
def test_export_writes_a_model_card_with_the_runs_corpus_and_test_scores(convtasnet_run, tmp_path):
    assert export.main([str(convtasnet_run), str(tmp_path / "export")]) == 0

    card = (tmp_path / "export" / "README.md").read_text()
    summary = json.loads((convtasnet_run / "test_results_summary.json").read_text())
    assert f"| SI-SNRi | {summary['si-snr_i']['mean']:.2f} |" in card
    assert f"| SDRi | {summary['sdr_i']['mean']:.2f} |" in card
    assert f"{summary['si-snr_i']['count']} mixtures" in card
    assert "`experiment_name`: convtasnet-wsj0mix" in card and "`N_epochs`: 24" in card
    separator = load_separator(tmp_path / "export")
    parameters = sum(p.numel() for p in separator.mods.parameters())
    assert f"| total | | {parameters:,} " in card
    assert "SepformerSeparation.from_hparams" in card and "separate.py --model" in card


@pytest.mark.slow
def test_chunked_si_snri_is_within_half_a_db_of_single_pass(convtasnet_run):
    """The real (barely trained) model: cutting the file into windows must not cost separation quality."""
    mixture, sources = two_speaker_recording(12.0)
    separator = load_separator(convtasnet_run)

    def si_snri(est_sources):
        si_snr, _ = pit_si_snr(est_sources[None], sources[None])
        baseline, _ = pit_si_snr(mixture[None, :, None].expand(-1, -1, 2), sources[None])
        return float((si_snr - baseline).mean())

    with torch.inference_mode():
        single = separate_long(separator.separate_batch, mixture, window=mixture.shape[0], hop=SAMPLE_RATE)
        chunked = separate_long(separator.separate_batch, mixture, window=2 * SAMPLE_RATE, hop=SAMPLE_RATE)
    assert si_snri(single) > 1.0  # the model separates something, so there is something to lose
    assert abs(si_snri(chunked) - si_snri(single)) < 0.5


@pytest.fixture
def recordings(tmp_path) -> Path:
    return write_recordings(tmp_path / "in")


@pytest.mark.slow
def test_each_input_gives_one_file_per_speaker(convtasnet_run, recordings, tmp_path):
    arguments = ["--model", str(convtasnet_run), "--keep-all-tracks", "--output-dir", str(tmp_path / "out")]
    assert separate.main([*arguments, str(recordings)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "talk0_s1.wav",
        "talk0_s2.wav",
        "talk1_s1.wav",
        "talk1_s2.wav",
    ]
    info = sf.info(tmp_path / "out" / "talk0_s1.wav")
    assert (info.samplerate, info.frames) == (SAMPLE_RATE, 2 * SAMPLE_RATE)


@pytest.mark.slow
def test_shifts_average_delayed_views_and_may_not_exceed_the_encoder_hop(convtasnet_run, recordings, tmp_path, caplog):
    """--shifts 2 separates each file as it is and delayed by half an encoder hop; more shifts than the hop's
    samples are refused before anything is read."""
    base = ["--model", str(convtasnet_run), "--keep-all-tracks", "--output-dir"]
    talk = str(recordings / "talk0.wav")
    assert separate.main([*base, str(tmp_path / "plain"), talk]) == 0
    assert separate.main([*base, str(tmp_path / "shifted"), "--shifts", "2", talk]) == 0
    plain = sf.read(tmp_path / "plain" / "talk0_s1.wav")[0]
    shifted = [sf.read(tmp_path / "shifted" / f"talk0_s{k}.wav")[0] for k in (1, 2)]
    assert all(track.shape == plain.shape for track in shifted)
    assert not any(np.allclose(track, plain) for track in shifted)  # the views changed the estimates...
    assert max(np.corrcoef(plain, track)[0, 1] for track in shifted) > 0.9  # ...of the same separation

    hop = load_hparams(str(convtasnet_run / "hyperparams.yaml"))["kernel_size"] // 2
    assert separate.main([*base, str(tmp_path / "refused"), "--shifts", str(hop + 1), talk]) == 2
    assert f"exceed the encoder's hop ({hop} samples)" in caplog.text
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_mixture_consistency_option_makes_the_tracks_sum_to_the_mixture(convtasnet_run, recordings, tmp_path):
    base = ["--model", str(convtasnet_run), "--keep-all-tracks", "--output-dir"]
    talk = recordings / "talk0.wav"
    assert separate.main([*base, str(tmp_path / "plain"), str(talk)]) == 0
    assert separate.main([*base, str(tmp_path / "consistent"), "--mixture-consistency", str(talk)]) == 0
    mixture = sf.read(talk)[0]
    for name, off_by in (("plain", lambda residual: residual > 0.05), ("consistent", lambda residual: residual < 1e-3)):
        tracks = [sf.read(tmp_path / name / f"talk0_s{k}.wav")[0] for k in (1, 2)]
        residual = np.sqrt(np.mean((mixture - sum(tracks)) ** 2) / np.mean(mixture**2))
        assert off_by(residual), (name, residual)


@pytest.mark.slow
def test_bad_inputs_give_one_error_line_each_and_the_others_are_separated(convtasnet_run, recordings, tmp_path, caplog):
    (tmp_path / "garbage.wav").write_bytes(b"not audio" * 100)
    write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    inputs = [tmp_path / "garbage.wav", recordings / "talk0.wav", tmp_path / "empty.wav", tmp_path / "missing.wav"]
    arguments = ["--model", str(convtasnet_run), "--keep-all-tracks", "--output-dir", str(tmp_path / "out")]
    code = separate.main([*arguments, *map(str, inputs)])

    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.getMessage().startswith("error:")]
    assert len(errors) == 3
    for name in ("garbage.wav", "empty.wav", "missing.wav"):
        assert sum(name in error for error in errors) == 1
    assert (tmp_path / "out" / "talk0_s2.wav").is_file()


@pytest.mark.slow
def test_outputs_never_replace_an_input_or_an_existing_file(convtasnet_run, recordings, tmp_path, caplog):
    """A folder holding a.wav and the user's own a_s1.wav, separated into itself: a.wav would overwrite a_s1.wav."""
    write(recordings / "talk0_s1.wav", two_speaker_recording(2.0, seed=5)[0].numpy())
    users_file = (recordings / "talk0_s1.wav").read_bytes()
    base = ["--model", str(convtasnet_run), "--output-dir", str(recordings)]

    assert separate.main([*base, str(recordings / "talk0.wav"), str(recordings / "talk0_s1.wav")]) == 1
    assert (recordings / "talk0_s1.wav").read_bytes() == users_file
    assert error_lines(caplog) == [
        f"error: {recordings / 'talk0.wav'}: its output {recordings / 'talk0_s1.wav'} would replace an input; "
        "choose another --output-dir",
    ]
    assert (recordings / "talk0_s1_s1.wav").is_file()  # the user's file was separated as an input

    caplog.clear()
    assert separate.main([*base, str(recordings / "talk0_s1.wav")]) == 1  # its outputs exist now
    assert "talk0_s1_s1.wav exists; pass --overwrite" in error_lines(caplog)[0]
    assert separate.main([*base, "--overwrite", str(recordings / "talk0_s1.wav")]) == 0


@pytest.mark.slow
def test_a_recording_with_nan_or_inf_is_refused_naming_it(convtasnet_run, recordings, tmp_path, caplog):
    signal = two_speaker_recording(1.0)[0].numpy()
    signal[[10, 20]] = [np.nan, np.inf]
    write(tmp_path / "broken.wav", signal)
    code = separate.main(
        [
            "--model",
            str(convtasnet_run),
            "--output-dir",
            str(tmp_path / "out"),
            str(tmp_path / "broken.wav"),
            str(recordings / "talk0.wav"),
        ]
    )
    assert code == 1
    assert error_lines(caplog)[0] == (
        f"error: {tmp_path / 'broken.wav'}: 2 of its {SAMPLE_RATE} samples are NaN or infinite; refusing it"
    )
    assert not (tmp_path / "out" / "broken_s1.wav").exists() and (tmp_path / "out" / "talk0_s1.wav").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "option, message",
    [
        (["--hop", "0.00001"], "must be at least 0.1 s and 0.01 s"),
        (["--window", "0.001", "--hop", "0.0005"], "must be at least 0.1 s and 0.01 s"),
        (["--batch-size", "0"], "batch size must be at least 1, got 0"),
    ],
)
def test_unusable_window_hop_or_batch_size_is_one_line_before_any_work(
    convtasnet_run, recordings, tmp_path, caplog, option, message
):
    code = separate.main(
        ["--model", str(convtasnet_run), "--output-dir", str(tmp_path / "out"), *option, str(recordings)]
    )
    assert code == 2
    assert len(error_lines(caplog)) == 1 and message in error_lines(caplog)[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_output_dir_that_cannot_be_created_fails_before_separating(convtasnet_run, recordings, tmp_path, caplog):
    (tmp_path / "file").write_text("a regular file")
    code = separate.main(
        ["--model", str(convtasnet_run), "--output-dir", str(tmp_path / "file" / "out"), str(recordings)]
    )
    assert code == 2
    assert error_lines(caplog) == [f"error: cannot create --output-dir {tmp_path / 'file' / 'out'} (Not a directory)"]


@pytest.mark.slow
def test_resampling_and_downmix_are_said_once(convtasnet_run, tmp_path, caplog):
    for seed in range(2):
        mono = two_speaker_recording(1.0, seed)[0].numpy()
        stereo_16k = np.repeat(np.stack([mono, 0.5 * mono], axis=1), 2, axis=0)  # crude 16 kHz
        write(tmp_path / f"stereo{seed}.wav", stereo_16k, 16000)
    code = separate.main(["--model", str(convtasnet_run), "--output-dir", str(tmp_path / "out"), f"{tmp_path}/*.wav"])

    assert code == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("Resampling 16000 Hz") for m in messages) == 1
    assert sum(m.startswith("Mixing 2-channel") for m in messages) == 1
    assert sf.info(tmp_path / "out" / "stereo1_s1.wav").samplerate == SAMPLE_RATE


@pytest.mark.slow
def test_output_rate_input_writes_at_each_inputs_rate(convtasnet_run, tmp_path):
    write(tmp_path / "talk.wav", np.repeat(two_speaker_recording(1.0)[0].numpy(), 2), 16000)
    output_dir = tmp_path / "out"
    arguments = ["--model", str(convtasnet_run), "--output-dir", str(output_dir), "--output-rate", "input"]
    assert separate.main([*arguments, str(tmp_path / "talk.wav")]) == 0
    info = sf.info(output_dir / "talk_s1.wav")
    assert (info.samplerate, info.frames) == (16000, 16000)
    for frames in (146198, 146197):  # 44.1 kHz: the model's 8 kHz does not divide it; each track the input's length
        recording = np.resize(two_speaker_recording(1.0)[0].numpy(), frames)
        write(tmp_path / f"cd{frames}.wav", recording, 44100)
        assert separate.main([*arguments, "--keep-all-tracks", str(tmp_path / f"cd{frames}.wav")]) == 0
        assert {sf.info(path).frames for path in output_dir.glob(f"cd{frames}_s*.wav")} == {frames}
