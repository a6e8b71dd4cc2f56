"""Inference: model folders, export to SpeechBrain's `SepformerSeparation`, chunked separation, the CLIs.

Models used:
- a ConvTasNet trained by `train.py` (subprocess, 24 epochs on a tiny tree, ~10 s, once per module): the real
  run folder layout, for export and the CLI, and a model that separates the test's two voices a little
  (> 1 dB SI-SNRi) for the single-pass vs chunked comparison. Its speaker order happens to be stable across
  windows, so it cannot show that windows get re-ordered.
- a SepFormer "run" written with the recipe's own config and Checkpointer (no training; two checkpoints, the
  better one older), for export and best-checkpoint selection.
- an oracle stand-in separator that returns the true sources of each window in a window-dependent speaker
  order and at window-dependent gains. A tiny trained model does not separate speakers, so only a perfect
  separator can show that chunking keeps each speaker on one track and restores levels: any error is then
  the chunking's.
"""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.inference.separation import SepformerSeparation

import export
import separate
from speechsep.evaluation.metrics import pit_si_snr
from speechsep.inference import files
from speechsep.inference.files import FileSeparator, SeparationOptions, SeparationOptionsError, expand_inputs
from speechsep.inference.model_folder import ModelFolderError, find_model, load_separator
from speechsep.inference.separation import (
    match_mixture_level,
    mixture_consistency,
    separate_long,
    separate_shifted,
    with_mixture_consistency,
)
from speechsep.training.config import load_hparams, resolved_yaml
from tests.corpus_trees import make_wsj0mix, voice
from tests.helpers import REPO, TINY_CONVTASNET, TINY_SEPFORMER, limit_file_size, sharing_separator
from tests.published_models import write_published_folder

SAMPLE_RATE = 8000


# ---------------------------------------------------------------- model folders
def overrides_text(values: dict) -> str:
    return "\n".join(f"{key}: {json.dumps(value)}" for key, value in values.items())


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


@pytest.fixture(scope="module")
def sepformer_run(tmp_path_factory) -> Path:
    """A tiny SepFormer run folder saved as train.py saves one, with two checkpoints: the best is the older."""
    run = tmp_path_factory.mktemp("sepformer") / "run"
    overrides = overrides_text({"data_folder": str(run / "data"), "output_folder": str(run), **TINY_SEPFORMER})
    hparams = load_hparams(REPO / "hparams" / "sepformer.yaml", overrides)
    run.mkdir(parents=True, exist_ok=True)
    (run / "hyperparams.yaml").write_text(resolved_yaml(REPO / "hparams" / "sepformer.yaml", overrides))
    checkpointer = hparams["checkpointer"]
    checkpointer.save_checkpoint(meta={"si-snr": 5.0}, name="best")
    with torch.no_grad():
        for parameter in hparams["modules"]["masknet"].parameters():
            parameter.add_(0.1)
    checkpointer.save_checkpoint(meta={"si-snr": 1.0}, name="latest")
    return run


def recipe_estimates(run: Path, mixture: torch.Tensor) -> torch.Tensor:
    """What train.py's `Separation.separate` gives with the run's own config and best checkpoint."""
    from train import Separation

    hparams = load_hparams(run / "hyperparams.yaml")
    hparams["checkpointer"].recover_if_possible(max_key="si-snr")
    brain = Separation(modules=hparams["modules"], hparams=hparams, run_opts={"device": "cpu"})
    brain.modules.eval()
    with torch.no_grad():
        return brain.separate(mixture)


def test_run_folder_uses_the_checkpoint_with_the_best_si_snr(sepformer_run):
    assert find_model(sepformer_run).weights_dir.name == "CKPT+best"


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


def test_export_holds_only_the_model(sepformer_run, tmp_path):
    export.main([str(sepformer_run), str(tmp_path / "export")])
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "README.md",
        "decoder.ckpt",
        "encoder.ckpt",
        "hyperparams.yaml",
        "masknet.ckpt",
    ]
    config = (tmp_path / "export" / "hyperparams.yaml").read_text()
    for absent in (str(sepformer_run), "data_folder", "optimizer", "checkpointer", "speechsep", "huggingface"):
        assert absent not in config
    assert "SBTransformerBlock" in config


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


@pytest.fixture
def sepformer_run_copy(sepformer_run, tmp_path) -> Path:
    """A copy of the SepFormer run whose checkpoints a test may damage (the config names no path of the run's
    that a model needs)."""
    copy = tmp_path / "run"
    shutil.copytree(sepformer_run, copy)
    return copy


def test_an_export_of_an_export_keeps_the_training_and_test_scores_of_the_first_card(
    sepformer_run, sepformer_run_copy, tmp_path
):
    config = sepformer_run_copy / "hyperparams.yaml"
    config.write_text(config.read_text().replace(str(sepformer_run), str(sepformer_run_copy)))  # its own results
    summary = {"si-snr_i": {"mean": 12.34, "ci95_low": 11.0, "ci95_high": 13.5, "count": 7}}
    (sepformer_run_copy / "test_results_summary.json").write_text(json.dumps(summary))
    assert export.main([str(sepformer_run_copy), str(tmp_path / "first")]) == 0
    assert export.main([str(tmp_path / "first"), str(tmp_path / "second")]) == 0

    card = (tmp_path / "second" / "README.md").read_text()
    assert (
        "from first (an export of run, training checkpoint CKPT+best); the training and test scores below are" in card
    )
    assert "`experiment_name`: sepformer-wsj0mix" in card and "Unknown" not in card
    assert "7 mixtures" in card and "| SI-SNRi | 12.34 | 11.00 .. 13.50 |" in card


@pytest.mark.parametrize("damage", [b"", b"\x00\xff garbled: [", b"just text"])
def test_a_checkpoint_with_an_unreadable_meta_file_is_skipped_with_a_warning(sepformer_run_copy, caplog, damage):
    (sepformer_run_copy / "save" / "CKPT+best" / "CKPT.yaml").write_bytes(damage)
    assert find_model(sepformer_run_copy).weights_dir.name == "CKPT+latest"
    assert f"Skipping checkpoint {sepformer_run_copy / 'save' / 'CKPT+best'}: unreadable CKPT.yaml" in caplog.text


def test_a_run_whose_every_checkpoint_is_unreadable_is_one_line_for_separate_and_export(
    sepformer_run_copy, tmp_path, caplog
):
    for meta_file in (sepformer_run_copy / "save").glob("CKPT+*/CKPT.yaml"):
        meta_file.write_text("")
    message = f"error: {sepformer_run_copy / 'save'} has no checkpoint with a 'si-snr' meta"
    assert separate.main(["--model", str(sepformer_run_copy), "--output-dir", str(tmp_path / "out"), "x.wav"]) == 2
    assert export.main([str(sepformer_run_copy), str(tmp_path / "export")]) == 2
    errors = error_lines(caplog)
    assert len(errors) == 2 and all(error.startswith(message) for error in errors)


def test_missing_model_folder_fails_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "separate.py", "--model", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path), "x.wav"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: model folder not found: {tmp_path / 'nowhere'}"]


def test_folder_without_checkpoint_or_weights_is_not_a_model(tmp_path):
    (tmp_path / "hyperparams.yaml").write_text("num_spks: 2\nsample_rate: 8000\n")
    with pytest.raises(ModelFolderError, match="declares no encoder, masknet, decoder module"):
        load_separator(tmp_path)


# ---------------------------------------------------------------- chunked separation, with an oracle
def two_speaker_recording(seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same two speakers (pitch ~110 Hz and ~220 Hz) over many 1.5 s utterances with short pauses.

    Returns mixture [time] and sources [time, 2].
    """
    rng = np.random.default_rng(seed)
    num_samples = int(seconds * SAMPLE_RATE)
    sources = np.zeros((num_samples, 2), dtype=np.float32)
    for k, f0 in enumerate((110.0, 220.0)):
        start = int(rng.integers(0, SAMPLE_RATE // 2))
        while start < num_samples:
            length = min(int(1.5 * SAMPLE_RATE), num_samples - start)
            sources[start : start + length, k] = voice(rng, length, SAMPLE_RATE, f0) * rng.uniform(0.5, 1.5)
            start += length + int(rng.integers(0, SAMPLE_RATE // 4))
    sources = torch.from_numpy(sources)
    return sources.sum(dim=1), sources


class OracleSeparator:
    """Returns the true sources of each window, in a window-dependent order and at window-dependent gains.

    It finds where a window starts in the recording from its first samples of sound, so it does not rely on
    being called in order or on where windows start. It records the shapes it was given.
    """

    KEY = 64  # samples of sound that tell where they are (the recordings' random voices never repeat them)

    def __init__(self, mixture: torch.Tensor, sources: torch.Tensor, seed: int = 0):
        self.mixture, self.sources = mixture, sources
        sound = mixture[: mixture.shape[0] - self.KEY].nonzero()[:, 0].tolist()
        self.positions = {self._key(mixture[position:]): position for position in sound}
        self.rng = np.random.default_rng(seed)
        self.input_shapes = []

    def _key(self, samples: torch.Tensor) -> bytes:
        return samples[: self.KEY].numpy().tobytes()

    def _sources_of(self, window: torch.Tensor) -> torch.Tensor:
        sources = torch.zeros(window.shape[0], 2)  # silence for a silent window
        if window.any():
            first_sound = int(window.nonzero()[0, 0])
            start = self.positions[self._key(window[first_sound:])] - first_sound
            piece = self.sources[start : start + window.shape[0]]
            sources[: piece.shape[0]] = piece
        return sources

    def separate_batch(self, mixtures: torch.Tensor) -> torch.Tensor:
        self.input_shapes.append(tuple(mixtures.shape))
        outputs = []
        for window in mixtures:
            sources = self._sources_of(window)
            order = torch.from_numpy(self.rng.permutation(2))
            gains = torch.from_numpy(self.rng.uniform(0.1, 10.0, 2)).float()
            outputs.append(sources[:, order] * gains)
        return torch.stack(outputs)


def segment_permutations(est_sources: torch.Tensor, sources: torch.Tensor, segment: int) -> list[list[int]]:
    """The best speaker order of the estimates on each `segment`-sample stretch where both speakers talk."""
    orders = []
    for start in range(0, sources.shape[0] - segment + 1, segment):
        piece = sources[start : start + segment]
        if (piece.abs().amax(dim=0) > 0.05).all():
            _, perm = pit_si_snr(est_sources[None, start : start + segment], piece[None])
            orders.append(perm[0].tolist())
    return orders


def test_chunked_separation_keeps_each_speaker_on_one_track():
    mixture, sources = two_speaker_recording(30.0)
    window, hop = 2 * SAMPLE_RATE, SAMPLE_RATE
    oracle = OracleSeparator(mixture, sources)
    est_sources = separate_long(oracle.separate_batch, mixture, window, hop, batch_size=3)

    orders = segment_permutations(est_sources, sources, segment=SAMPLE_RATE // 2)
    assert len(orders) > 20
    assert all(order == orders[0] for order in orders)


def test_chunked_separation_restores_each_speaker_at_the_mixture_level():
    mixture, sources = two_speaker_recording(20.0, seed=1)
    hop = SAMPLE_RATE
    oracle = OracleSeparator(mixture, sources)
    est_sources = separate_long(oracle.separate_batch, mixture, 2 * hop, hop)

    _, perm = pit_si_snr(est_sources[None], sources[None])
    assert (est_sources[:, perm[0]] - sources).abs().max() < 1e-3


def test_model_sees_at_most_a_batch_of_windows():
    mixture, sources = two_speaker_recording(10.0)
    oracle = OracleSeparator(mixture, sources)
    separate_long(oracle.separate_batch, mixture, window=1500, hop=1000, batch_size=4)
    assert max(shape[0] for shape in oracle.input_shapes) == 4
    assert len({shape[1] for shape in oracle.input_shapes}) == 1 and oracle.input_shapes[0][1] <= 1500


@pytest.mark.parametrize("num_samples", [1501, 2000, 2499, 2500, 2501, 10_001, 80_000])
def test_windows_are_spread_evenly_so_the_model_separates_little_more_than_the_input(num_samples):
    window, hop = 1500, 1000
    mixture, sources = two_speaker_recording(num_samples / SAMPLE_RATE)
    oracle = OracleSeparator(mixture, sources)
    separate_long(oracle.separate_batch, mixture, window=window, hop=hop, batch_size=1)
    lengths = {shape[1] for shape in oracle.input_shapes}
    fewest = math.ceil((num_samples - (window - hop)) / hop)
    assert len(lengths) == 1 and max(lengths) <= window and len(oracle.input_shapes) == fewest
    separated = sum(shape[1] for shape in oracle.input_shapes)
    assert separated < num_samples + (fewest - 1) * (window - hop) + fewest  # the overlaps and rounding only


def test_input_shorter_than_a_window_is_separated_in_one_pass():
    mixture, sources = two_speaker_recording(3.0)
    oracle = OracleSeparator(mixture, sources)
    est_sources = separate_long(oracle.separate_batch, mixture, window=4 * SAMPLE_RATE, hop=SAMPLE_RATE)
    assert oracle.input_shapes == [(1, mixture.shape[0])]
    assert est_sources.shape == (mixture.shape[0], 2)


# (window, hop, length) in samples: hop from just under the window to window / 8 and 1 sample; lengths that
# hops do not divide (a last, partial window), a length just over one window, and windows of odd length.
OVERLAP_CASES = [
    (64, 63, 1000),
    (64, 48, 1000),
    (64, 32, 1000),
    (64, 21, 1000),
    (64, 16, 1001),
    (64, 8, 1003),
    (64, 5, 333),
    (64, 1, 200),
    (8, 2, 37),
    (8, 7, 9),
    (33, 4, 100),
]


def identity_separator(chunks: torch.Tensor) -> torch.Tensor:
    """Returns each window as it is, as the one source."""
    return chunks.unsqueeze(-1)


def sign_separator(seed: int = 0):
    """Splits each window into its positive and its negative samples, in a random order per window.

    The two tracks sum to the window and are the same signal in every window, so the right output is known
    (up to one order for the whole file); the random order makes the windows' speaker alignment matter.
    """
    rng = np.random.default_rng(seed)

    def separate_batch(chunks: torch.Tensor) -> torch.Tensor:
        tracks = torch.stack([chunks.clamp(min=0), chunks.clamp(max=0)], dim=-1)
        return torch.stack([window[:, rng.permutation(2)] for window in tracks])

    return separate_batch


@pytest.mark.parametrize("window, hop, length", OVERLAP_CASES)
def test_overlap_add_of_an_identity_separator_gives_back_the_input(window, hop, length):
    mixture = torch.randn(length, generator=torch.Generator().manual_seed(length))
    est_sources = separate_long(identity_separator, mixture, window, hop, batch_size=3)
    assert est_sources.shape == (length, 1)
    assert torch.allclose(est_sources[:, 0], mixture, atol=1e-5)


@pytest.mark.parametrize("window, hop, length", OVERLAP_CASES)
def test_overlap_add_keeps_each_track_on_one_output_whatever_the_overlap(window, hop, length):
    mixture = torch.randn(length, generator=torch.Generator().manual_seed(length))
    est_sources = separate_long(sign_separator(), mixture, window, hop, batch_size=2)
    expected = torch.stack([mixture.clamp(min=0), mixture.clamp(max=0)], dim=-1)
    if est_sources[:, 0].sum() < 0:  # the file's one speaker order is free
        expected = expected.flip(-1)
    assert torch.allclose(est_sources, expected, atol=1e-5)


def test_hop_must_be_shorter_than_the_window():
    with pytest.raises(ValueError, match="shorter than the window"):
        SeparationOptions(window=4.0, hop=4.0)


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


# ---------------------------------------------------------------- files and the command line
def write(path: Path, signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    sf.write(path, signal, sample_rate, subtype="FLOAT")
    return path


@pytest.fixture
def recordings(tmp_path) -> Path:
    """Two short mono 8 kHz recordings in a folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(2):
        write(folder / f"talk{seed}.wav", two_speaker_recording(2.0, seed)[0].numpy())
    return folder


@pytest.mark.slow
def test_each_input_gives_one_file_per_speaker(convtasnet_run, recordings, tmp_path):
    code = separate.main(["--model", str(convtasnet_run), "--output-dir", str(tmp_path / "out"), str(recordings)])
    assert code == 0
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
    base = ["--model", str(convtasnet_run), "--output-dir"]
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
    base = ["--model", str(convtasnet_run), "--output-dir"]
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
    code = separate.main(["--model", str(convtasnet_run), "--output-dir", str(tmp_path / "out"), *map(str, inputs)])

    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.getMessage().startswith("error:")]
    assert len(errors) == 3
    for name in ("garbage.wav", "empty.wav", "missing.wav"):
        assert sum(name in error for error in errors) == 1
    assert (tmp_path / "out" / "talk0_s2.wav").is_file()


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("error:")]


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


@pytest.fixture
def sharing_model(monkeypatch):
    """`separate.py --model <anything>` loads `sharing_separator`: the CLI without a model's cost."""
    monkeypatch.setattr(separate, "load_separator", lambda *args, **kwargs: sharing_separator(SAMPLE_RATE))


def test_of_two_runs_writing_the_same_tracks_at_once_one_fails_and_the_others_tracks_stay(
    sharing_model, tmp_path, monkeypatch, caplog
):
    """Run A has checked that its names are free and is writing when run B (a same-named input from another
    folder) writes the same names: A must not replace B's tracks, nor exit 0 as if it had written them."""
    for folder, seconds in (("a", 1.0), ("b", 2.0)):
        (tmp_path / folder).mkdir()
        write(tmp_path / folder / "meeting.wav", two_speaker_recording(seconds)[0].numpy())
    out = str(tmp_path / "out")
    write_track, codes = files._write_track, {}

    def write_while_run_b_runs(*args, **kwargs):
        if "b" not in codes:
            codes["b"] = None  # run B's own writes go through
            codes["b"] = separate.main(["--model", "m", "--output-dir", out, str(tmp_path / "b" / "meeting.wav")])
        write_track(*args, **kwargs)

    monkeypatch.setattr(files, "_write_track", write_while_run_b_runs)
    codes["a"] = separate.main(["--model", "m", "--output-dir", out, str(tmp_path / "a" / "meeting.wav")])

    assert codes == {"b": 0, "a": 1}
    assert error_lines(caplog) == [
        f"error: {tmp_path / 'a' / 'meeting.wav'}: {tmp_path / 'out' / 'meeting_s1.wav'} exists; pass --overwrite "
        "to replace it, or choose another output folder"
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meeting_s1.wav", "meeting_s2.wav"]
    assert all(sf.info(tmp_path / "out" / f"meeting_s{k}.wav").frames == 2 * SAMPLE_RATE for k in (1, 2))


def separate_with_speakers(monkeypatch, num_spks: int, *arguments: str) -> int:
    """`separate.py` with a `sharing_separator` of `num_spks` speakers."""
    model = sharing_separator(SAMPLE_RATE, num_spks)
    monkeypatch.setattr(separate, "load_separator", lambda *args, **kwargs: model)
    return separate.main(["--model", "m", *arguments])


def test_overwrite_by_a_model_with_fewer_speakers_removes_the_earlier_extra_tracks(
    recordings, tmp_path, monkeypatch, caplog
):
    out, talk = tmp_path / "out", str(recordings / "talk0.wav")
    assert separate_with_speakers(monkeypatch, 3, "--output-dir", str(out), talk) == 0
    write(out / "talk0_s4.wav", np.zeros(100))  # a file of the user's, named like a track: not separate.py's

    assert separate_with_speakers(monkeypatch, 2, "--output-dir", str(out), talk) == 1  # x_s1 exists: refused
    assert sorted(p.name for p in out.iterdir()) == ["talk0_s1.wav", "talk0_s2.wav", "talk0_s3.wav", "talk0_s4.wav"]

    assert separate_with_speakers(monkeypatch, 2, "--output-dir", str(out), "--overwrite", talk) == 0
    assert sorted(p.name for p in out.iterdir()) == ["talk0_s1.wav", "talk0_s2.wav", "talk0_s4.wav"]
    assert "talk0.wav: removed talk0_s3.wav, tracks of an earlier model with more speakers" in caplog.text


@pytest.mark.parametrize("output_dir", ["in/separated", "in"])
def test_a_rerun_does_not_separate_the_tracks_of_the_last_run(sharing_model, recordings, tmp_path, output_dir):
    """--output-dir inside the folder of inputs (or that folder itself): a rerun separates the same inputs."""
    arguments = ["--model", "m", "--output-dir", str(tmp_path / output_dir), "--overwrite", str(recordings)]
    assert separate.main(arguments) == 0
    written = sorted(recordings.rglob("*"))
    assert len([path for path in written if path.is_file()]) == 2 + 4
    assert separate.main(arguments) == 0
    assert sorted(recordings.rglob("*")) == written


def test_a_track_over_a_file_size_limit_is_one_error_and_leaves_nothing(sharing_model, recordings, tmp_path):
    """separate.py with files limited to 20 kB (as a full disk): no truncated track that a rerun would refuse
    to replace."""
    script = (
        "import sys, separate; from tests.helpers import sharing_separator; "
        "separate.load_separator = lambda *args, **kwargs: sharing_separator(); sys.exit(separate.main())"
    )
    arguments = ["--model", "m", "--output-dir", str(tmp_path / "out"), str(recordings / "talk0.wav")]

    result = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size(20000),
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot write {tmp_path / 'out' / 'talk0_s1.wav'}" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "out").iterdir()) == []
    assert separate.main(arguments) == 0  # nothing half-written is in the way


def oracle_file_separator(mixture, sources, **options) -> FileSeparator:
    """A FileSeparator around the oracle, with the attributes of SpeechBrain's separator it uses."""
    oracle = OracleSeparator(mixture, sources)
    hparams = SimpleNamespace(sample_rate=SAMPLE_RATE, num_spks=2)
    stand_in = SimpleNamespace(separate_batch=oracle.separate_batch, hparams=hparams)
    return FileSeparator(stand_in, SeparationOptions(**{"window": 2.0, "hop": 1.0, "progress": False, **options}))


def test_estimates_louder_than_full_scale_are_scaled_down_not_clipped(tmp_path):
    t = torch.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    tone, other_tone = torch.sin(2 * torch.pi * 200 * t), torch.sin(2 * torch.pi * 330 * t)
    sources = torch.stack([1.5 * tone, -1.2 * tone + 0.2 * other_tone], dim=1)
    mixture = sources.sum(dim=1)  # peaks below 0.5: the sources partly cancel
    write(tmp_path / "loud.wav", mixture.numpy())
    result = oracle_file_separator(mixture, sources).separate_file(tmp_path / "loud.wav", tmp_path / "out")

    tracks = [sf.read(path)[0] for path in result.outputs]
    peaks = sorted(np.abs(track).max() for track in tracks)
    assert peaks[1] == pytest.approx(1.0, abs=1e-3)
    assert peaks[0] / peaks[1] == pytest.approx(float(sources[:, 1].abs().max() / sources[:, 0].abs().max()), abs=0.01)


def test_peak_normalisation_brings_every_track_to_0_9(tmp_path):
    mixture, sources = two_speaker_recording(3.0)
    write(tmp_path / "talk.wav", mixture.numpy())
    separator = oracle_file_separator(mixture, sources, normalize="peak")
    result = separator.separate_file(tmp_path / "talk.wav", tmp_path / "out")
    for path in result.outputs:
        assert np.abs(sf.read(path)[0]).max() == pytest.approx(0.9, abs=1e-3)


def test_window_and_hop_are_counted_in_samples_at_the_models_rate():
    silence = torch.zeros(SAMPLE_RATE)
    separator = oracle_file_separator(silence, silence[:, None].expand(-1, 2), window=1.0, hop=0.8)
    assert (separator.window, separator.hop) == (8000, 6400)


@pytest.mark.parametrize("hop", [0.99999, 0.95])
def test_windows_must_overlap_enough_to_match_their_speakers(hop):
    """A hop just under the window leaves a few samples to align the speakers of consecutive windows on: they
    swap tracks. Refused in one line that proposes a hop."""
    with pytest.raises(SeparationOptionsError, match=r"overlap by .* at least 0.1 s is needed .* \(e.g. --hop 0.5\)"):
        SeparationOptions(window=1.0, hop=hop)
    SeparationOptions(window=1.0, hop=0.9)  # 0.1 s: enough


@pytest.mark.parametrize("window", [0.11, 0.123456, 0.17777, 0.19999, 0.3, 7.3, 60.0])
def test_the_hop_proposed_for_too_little_overlap_is_accepted(window):
    with pytest.raises(SeparationOptionsError) as refused:
        SeparationOptions(window=window, hop=window - 0.05)
    proposal = float(re.search(r"e\.g\. --hop ([0-9.]+)\)", str(refused.value)).group(1))
    SeparationOptions(window=window, hop=proposal)


def test_a_window_too_short_for_any_hop_says_how_long_it_must_be():
    with pytest.raises(SeparationOptionsError, match=r"\(the window must be at least 0.11 s\)"):
        SeparationOptions(window=0.105, hop=0.05)


def test_a_window_shorter_than_the_models_shortest_input_is_refused_before_any_work(tmp_path, monkeypatch):
    separator = load_separator(write_published_folder(tmp_path / "model", "convtasnet"))
    monkeypatch.setattr(files, "shortest_input", lambda encoder, masknet: 12000)  # as a deep reflect-padded TCN
    with pytest.raises(SeparationOptionsError) as error:
        FileSeparator(separator, SeparationOptions(window=1.0, hop=0.5))
    assert str(error.value) == (
        "window (1.0 s) is 8000 samples at the model's 8000 Hz, shorter than the model's shortest input "
        "(12000 samples): use --window 1.5 or more"
    )


def test_evenly_spread_windows_are_never_shorter_than_the_models_shortest_input():
    mixture, sources = two_speaker_recording(1.0)
    oracle = OracleSeparator(mixture, sources)
    window, hop, shortest = 5000, 4000, 4500  # an input just over one window would get two of ~3000 samples
    separate_long(oracle.separate_batch, mixture[:5001], window, hop, min_window=shortest)
    assert {shape[1] for shape in oracle.input_shapes} == {shortest}


@pytest.mark.parametrize("seconds", [{"window": float("inf")}, {"hop": float("nan")}, {"window": 1e308}])
def test_window_and_hop_must_be_finite(seconds):
    with pytest.raises(SeparationOptionsError, match="finite|too long"):
        SeparationOptions(**seconds).in_samples(SAMPLE_RATE)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--window", "1", "--hop", "0.99999"], "error: window (1.0 s) and hop (0.99999 s) overlap by 1e-05 s"),
        (["--window", "inf"], "error: window (inf s) and hop (3.5 s) must be finite numbers"),
        (["--device", "cuda"], "error: --device cuda: this machine (or this PyTorch build) has no cuda device"),
        (["--device", "nonsense"], "error: --device 'nonsense' is not a device: use cpu, cuda or cuda:N"),
        (["--device", "meta"], "error: --device meta holds no data"),
    ],
)
def test_unusable_window_hop_or_device_is_one_line_before_any_work(
    sepformer_run, recordings, tmp_path, caplog, monkeypatch, option, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "cuda" is then a machine without one
    code = separate.main(
        ["--model", str(sepformer_run), "--output-dir", str(tmp_path / "out"), *option, str(recordings)]
    )
    assert code == 2
    assert len(error_lines(caplog)) == 1 and error_lines(caplog)[0].startswith(message)
    assert not (tmp_path / "out").exists()


def test_inputs_may_be_files_folders_or_globs(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.wav", "a/deep/y.flac", "z.ogg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    files, errors = expand_inputs([f"{tmp_path}/a", f"{tmp_path}/*.ogg", f"{tmp_path}/a/x.wav", f"{tmp_path}/*.mp4"])
    assert files == [tmp_path / "a" / "deep" / "y.flac", tmp_path / "a" / "x.wav", tmp_path / "z.ogg"]
    assert errors == [f"{tmp_path}/*.mp4: matches no file"]


def test_a_folder_or_glob_of_earlier_tracks_alone_says_they_were_skipped_and_how_to_separate_one(
    sharing_model, recordings, tmp_path, caplog
):
    out = tmp_path / "out"
    assert separate.main(["--model", "m", "--output-dir", str(out), str(recordings / "talk0.wav")]) == 0
    assert separate.main(["--model", "m", "--output-dir", str(tmp_path / "again"), str(out), f"{out}/*.wav"]) == 1
    assert error_lines(caplog) == [
        f"error: {name}: nothing to separate: 2 files are tracks that separate.py wrote earlier, skipped; to "
        "separate one, name the file itself"
        for name in (out, f"{out}/*.wav")
    ]


def test_a_folder_holding_inputs_and_earlier_tracks_says_how_many_tracks_were_skipped(
    sharing_model, recordings, tmp_path, caplog
):
    assert separate.main(["--model", "m", "--output-dir", str(recordings), str(recordings / "talk0.wav")]) == 0
    assert separate.main(["--model", "m", "--output-dir", str(tmp_path / "out"), str(recordings)]) == 0
    assert f"{recordings}: 2 files are tracks that separate.py wrote earlier, skipped" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"talk{k}_s{s}.wav" for k in (0, 1) for s in (1, 2)]


# ==================================================================== shift averaging
def delayed_oracle(sources, swap_offsets=()):
    """A 'separator' that returns the true sources, delayed like its input, in swapped order at `swap_offsets`."""

    def separate_batch(mixture):
        offset = mixture.shape[1] - sources.shape[1]
        est = torch.nn.functional.pad(sources, (0, 0, offset, 0))
        return est.flip(-1) if offset in swap_offsets else est

    return separate_batch


def test_shift_averaging_undoes_the_delays_and_aligns_the_speakers():
    torch.manual_seed(0)
    sources = torch.randn(2, 800, 2)  # [batch, time, num_spks]
    mixture = sources.sum(-1)
    # Offsets 0, 2, 4, 6 for 4 shifts over a hop of 8; the views at 2 and 6 come out with the speakers swapped.
    averaged = separate_shifted(delayed_oracle(sources, swap_offsets=(2, 6)), mixture, shifts=4, hop=8)
    assert averaged.shape == sources.shape
    assert torch.allclose(averaged, sources, atol=1e-5)


def test_shift_averaging_averages_the_views_at_the_mixture_level():
    torch.manual_seed(0)
    sources = torch.randn(1, 600, 2)
    mixture = sources.sum(-1)
    errors = {0: 0.1 * torch.randn(1, 600, 2), 2: 0.1 * torch.randn(1, 600, 2)}  # per offset (2 shifts, hop 4)

    def separate_batch(delayed):
        offset = delayed.shape[1] - 600
        return torch.nn.functional.pad(sources + errors[offset], (0, 0, offset, 0))

    expected = sum(match_mixture_level(sources + error, mixture) for error in errors.values()) / 2
    assert torch.allclose(separate_shifted(separate_batch, mixture, shifts=2, hop=4), expected, atol=1e-5)


def test_mixture_consistency_shares_what_the_estimates_leave_out_equally():
    torch.manual_seed(0)
    sources = torch.randn(2, 500, 2)
    mixture = sources.sum(-1)
    error = 0.3 * torch.randn(2, 500)
    # The first estimate misses `error`: each estimate gets half of it back.
    est_sources = torch.stack([sources[..., 0] - error, sources[..., 1]], dim=-1)
    consistent = mixture_consistency(est_sources, mixture)
    assert torch.allclose(consistent.sum(-1), mixture, atol=1e-5)
    level_matched = match_mixture_level(est_sources, mixture)
    expected = level_matched + (mixture - level_matched.sum(-1)).unsqueeze(-1) / 2
    assert torch.allclose(consistent, expected, atol=1e-6)
    # Estimates at an arbitrary scale are brought to the mixture's level first, so the oracle stays itself.
    assert torch.allclose(mixture_consistency(sources * torch.tensor([0.2, 5.0]), mixture), sources, atol=1e-4)
    separate_batch = with_mixture_consistency(lambda x: est_sources)
    assert torch.allclose(separate_batch(mixture), consistent)


def test_one_shift_is_the_separator_itself_and_bad_shift_counts_are_refused():
    mixture = torch.randn(1, 100)
    assert separate_shifted(lambda x: x.unsqueeze(-1) * 3, mixture, shifts=1, hop=8).equal(mixture.unsqueeze(-1) * 3)
    for shifts in (0, 9):
        with pytest.raises(ValueError, match="shifts"):
            separate_shifted(lambda x: x.unsqueeze(-1), mixture, shifts=shifts, hop=8)
