"""Choices that depend on the machine the recipe runs on."""

import torch


def native_bf16_cpu() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX on x86). Elsewhere oneDNN emulates bf16
    with conversions, and autocast would make a CPU training step slower, not faster."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_training_precision() -> str:
    """ "bf16" (autocast) on CPUs with native bf16, else "fp32": SpeechBrain's `precision` run option."""
    return "bf16" if native_bf16_cpu() else "fp32"
