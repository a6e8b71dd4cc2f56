"""Choices that depend on the machine the recipe runs on."""

import torch

from speechsep.errors import RecipeError


def native_bf16_cpu() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX on x86). Elsewhere oneDNN emulates bf16
    with conversions, and autocast would make a CPU training step slower, not faster."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_training_precision() -> str:
    """ "bf16" (autocast) on CPUs with native bf16, else "fp32": SpeechBrain's `precision` run option."""
    return "bf16" if native_bf16_cpu() else "fp32"


class DeviceError(RecipeError):
    """A `--device` this machine cannot run a model on."""


def check_device(name: str) -> str:
    """`name` if a model can run on that device here (cpu, cuda, cuda:N, mps, xpu, ...), else DeviceError.

    Checked before any work, so that a device that does not exist is one line, not a traceback from inside
    the first forward pass.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return name
    if device.type == "meta":
        raise DeviceError("--device meta holds no data, so nothing can run on it: use cpu or cuda")
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        raise DeviceError(f"--device {name}: this machine (or this PyTorch build) has no {device.type} device: use cpu")
    count = backend.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"--device {name}: this machine has {count} {device.type} device(s), numbered from 0")
    return name


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # what a model computes in at inference (autocast)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(RecipeError):
    """A precision that is not one of PRECISIONS, or that the device cannot compute in."""


def _native_bf16_cuda() -> bool:
    return torch.cuda.is_bf16_supported(including_emulation=False)


def inference_precision(precision: str, device: str) -> str:
    """The precision a model runs in on `device`: "fp32", "bf16" or "fp16" (autocast).

    "auto" is the fastest one this machine computes natively: bf16 on CUDA GPUs that have it (Ampere and
    later) and on CPUs with native bf16 (`native_bf16_cpu`), fp16 on older CUDA GPUs, fp32 elsewhere. An
    explicit choice the device cannot compute in is a PrecisionError: fp16 on a CPU without AMX-FP16, bf16
    on a CUDA GPU without it, anything but fp32 where PyTorch has no autocast for the device.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if _native_bf16_cuda() else "fp16"
        return "bf16" if kind == "cpu" and native_bf16_cpu() else "fp32"
    if precision == "fp32":
        return precision
    if not torch.amp.is_autocast_available(kind):
        raise PrecisionError(f"precision {precision}: PyTorch has no autocast on {kind}; use fp32")
    if kind == "cpu" and precision == "fp16" and not torch.cpu._is_amx_fp16_supported():
        raise PrecisionError("precision fp16 needs a GPU or a CPU with AMX-FP16; on this CPU use bf16 or fp32")
    if kind == "cuda" and precision == "bf16" and not _native_bf16_cuda():
        raise PrecisionError("precision bf16 needs a GPU of the Ampere generation or later; on this one use fp16")
    return precision


def autocast(precision: str, device: str):
    """The context that runs a model in `precision` ("fp32", "bf16" or "fp16", as `inference_precision` gives)
    on `device`: torch.autocast, or a context that changes nothing for fp32."""
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=AUTOCAST_DTYPES.get(precision), enabled=precision != "fp32")
