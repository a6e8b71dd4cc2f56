"""Inference precision: what `--precision auto` picks on each machine, the refusals, and what autocast changes.

The choice is tested by making the machine say what it has (monkeypatched capability checks); the output of a
real model (the tests' tiny SepFormer and Conv-TasNet, random weights) is compared between bf16 and fp32 on
this CPU, and on a GPU in fp16 and bf16 where one exists.
"""

import logging

import pytest
import soundfile
import torch
from speechbrain.inference.separation import SepformerSeparation

import separate
from speechsep.inference.files import FileSeparator, SeparationOptions, SeparationOptionsError
from speechsep.inference.model_folder import load_separator
from speechsep.training import hardware
from speechsep.training.hardware import PrecisionError, inference_precision
from tests.published_models import KINDS, write_published_folder

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    "native_bf16, expected", [(True, "bf16"), (False, "fp32")], ids=["cpu-with-bf16", "cpu-without"]
)
def test_auto_is_bf16_on_cpus_that_compute_it_natively_else_fp32(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: native_bf16)
    assert inference_precision("auto", "cpu") == expected


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp16")], ids=["ampere", "older-gpu"])
def test_auto_is_bf16_on_gpus_that_have_it_else_fp16(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(hardware, "_native_bf16_cuda", lambda: native_bf16)
    assert inference_precision("auto", "cuda") == expected
    assert inference_precision("auto", "cuda:1") == expected


def test_auto_is_fp32_on_other_devices_and_explicit_choices_are_kept(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: False)
    assert inference_precision("auto", "mps") == "fp32"
    assert inference_precision("bf16", "cpu") == "bf16"  # emulated there, but asked for
    assert inference_precision("fp32", "cuda") == "fp32"


@pytest.mark.parametrize(
    "precision, device, message",
    [
        ("fp8", "cpu", "precision 'fp8' is not one of auto, fp32, bf16, fp16"),
        ("fp16", "cpu", "precision fp16 needs a GPU or a CPU with AMX-FP16; on this CPU use bf16 or fp32"),
        ("bf16", "cuda", "precision bf16 needs a GPU of the Ampere generation or later; on this one use fp16"),
    ],
)
def test_a_precision_the_device_cannot_compute_in_is_refused(monkeypatch, precision, device, message):
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)
    monkeypatch.setattr(hardware, "_native_bf16_cuda", lambda: False)
    with pytest.raises(PrecisionError) as error:
        inference_precision(precision, device)
    assert str(error.value) == message


def test_separation_options_refuse_an_unknown_precision():
    with pytest.raises(SeparationOptionsError, match="precision must be one of auto, fp32, bf16, fp16, got 'fp64'"):
        SeparationOptions(precision="fp64")


def separator(kind: str, tmp_path, device: str = "cpu") -> SepformerSeparation:
    """What separate.py loads from a published folder of the tests' tiny model `kind` (random weights)."""
    return load_separator(write_published_folder(tmp_path / kind, kind), device=device)


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - estimate).pow(2).sum()))


@pytest.mark.parametrize("kind", ["sepformer", "convtasnet"])
def test_bf16_separates_as_fp32_does_within_25_db_and_fp32_is_the_model_itself(kind, tmp_path):
    model = separator(kind, tmp_path)
    mixture = torch.randn(8000 * 3, generator=torch.Generator().manual_seed(1)) * 0.1
    options = dict(window=2.0, hop=1.5, progress=False)
    fp32 = FileSeparator(model, SeparationOptions(precision="fp32", **options))
    bf16 = FileSeparator(model, SeparationOptions(precision="bf16", **options))
    with torch.inference_mode():
        assert torch.equal(fp32.separate_batch(mixture[None]), model.separate_batch(mixture[None]))
        reference, estimate = fp32.separate(mixture), bf16.separate(mixture)
    assert estimate.dtype == torch.float32 and estimate.shape == reference.shape
    assert 25 < snr_db(reference, estimate) < 200  # close, and not fp32 under another name


def test_separate_refuses_fp16_on_a_cpu_in_one_line_before_loading_the_model(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)
    arguments = ["--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "out"), "in.wav"]
    assert separate.main([*arguments, "--precision", "fp16", "--device", "cpu"]) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == ["error: precision fp16 needs a GPU or a CPU with AMX-FP16; on this CPU use bf16 or fp32"]


def test_separate_refuses_an_unknown_precision_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        separate.main(["--model", "m", "--output-dir", str(tmp_path), "in.wav", "--precision", "fp64"])
    assert exit_status.value.code == 2
    assert "argument --precision: invalid choice: 'fp64'" in capsys.readouterr().err


def test_separate_says_which_precision_auto_chose(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: True)
    folder = write_published_folder(tmp_path / "model", "convtasnet")
    recording = tmp_path / "mix.wav"
    soundfile.write(recording, torch.randn(4000).numpy() * 0.1, 8000)
    with caplog.at_level(logging.INFO):
        code = separate.main(["--model", str(folder), "--output-dir", str(tmp_path / "out"), str(recording)])
    assert code == 0
    assert "Computing in bf16 on cpu (--precision auto)" in caplog.messages


@requires_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16", "auto"])
@pytest.mark.parametrize("kind", ["sepformer", "convtasnet"])
def test_on_a_gpu_each_precision_and_batched_windows_separate_as_fp32_does(kind, precision, tmp_path):
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")
    model = separator(kind, tmp_path, device="cuda")
    mixture = torch.randn(8000 * 5, generator=torch.Generator().manual_seed(1)) * 0.1
    options = dict(window=2.0, hop=1.5, progress=False)
    fp32 = FileSeparator(model, SeparationOptions(precision="fp32", **options))
    lower = FileSeparator(model, SeparationOptions(precision=precision, batch_size=3, **options))
    with torch.inference_mode():
        reference, estimate = fp32.separate(mixture), lower.separate(mixture)
    assert lower.precision in ("fp16", "bf16")
    assert estimate.dtype == torch.float32 and estimate.device.type == "cpu"
    assert snr_db(reference, estimate) > 25


def test_published_kinds_cover_both_model_families():
    assert {"sepformer", "convtasnet"} <= set(KINDS)
