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
