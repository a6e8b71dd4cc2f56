"""Speed and peak memory of SepFormer with SpeechBrain's transformer block vs ours, and of ConvTasNet with
SpeechBrain's mask network vs ours (the same network, and the demo's ReLU / zero-padding variant).

Every configuration (model, block, precision, mode) runs in a fresh spawned process, so that
its peak memory is its own: the peak RSS (`resource.getrusage`) on CPU, or
`torch.cuda.max_memory_allocated` on GPU, minus the memory in use once the model and inputs are
built. Times are medians over repeats after warm-up.

    python -m bench.bench_models --quick                 # tiny models, seconds
    python -m bench.bench_models --device cuda           # fp32, bf16 and fp16 autocast
    python -m bench.bench_models --models convtasnet     # one model's section
"""

import argparse
import dataclasses
import multiprocessing
import os
import resource
import statistics
import tempfile
import traceback
from collections import namedtuple
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.conv_tasnet import MaskNet as SpeechBrainMaskNet
from speechbrain.lobes.models.dual_path import (
    Decoder,
    Dual_Path_Model,
    Encoder,
    SBTransformerBlock,
)
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper
from torch import nn

from bench.markdown import section
from bench.timing import time_steps
from speechsep.models.conv_tasnet import MaskNet
from speechsep.models.transformer import FastSBTransformerBlock
from speechsep.training.config import load_hparams

SAMPLE_RATE = 8000
NUM_SPKS = 2
BLOCKS = {"speechbrain": SBTransformerBlock, "ours": FastSBTransformerBlock}
# Conv-TasNet's mask network: SpeechBrain's, ours as the same network, ours as the demo trains it.
MASKNETS = {
    "speechbrain": lambda **sizes: SpeechBrainMaskNet(**sizes, norm_type="gLN", causal=False, mask_nonlinear="relu"),
    "ours": lambda **sizes: MaskNet(**sizes, activation="prelu", padding="reflect"),
    "ours, relu + zeros": lambda **sizes: MaskNet(**sizes, activation="relu", padding="zeros"),
}
# Every mask network config of hparams/, built as train.py builds it (its sizes, the speed-ups applied).
RECIPE_CONFIGS = ("sepformer", "convtasnet", "dprnn", "dptnet", "skim", "resepformer", "sepformer-conformerintra")
CONFIG_BLOCK = "recipe config"
HPARAMS = Path(__file__).resolve().parents[1] / "hparams"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# The encoder's channels (N) and kernel size (L), then the mask network's sizes, by SpeechBrain's names.
SepFormerSize = namedtuple(
    "SepFormerSize", "encoder_channels kernel_size num_blocks num_layers d_model nhead d_ffn chunk_size"
)
ConvTasNetSize = namedtuple("ConvTasNetSize", "encoder_channels kernel_size B H P X R")

# The upstream WSJ0-2mix recipes' sizes (SpeechBrain's sepformer.yaml / convtasnet.yaml), and tiny ones for --quick.
FULL_SIZES = {
    "sepformer": SepFormerSize(256, 16, num_blocks=2, num_layers=8, d_model=256, nhead=8, d_ffn=1024, chunk_size=250),
    "convtasnet": ConvTasNetSize(256, 16, B=256, H=512, P=3, X=6, R=4),
}
TINY_SIZES = {
    "sepformer": SepFormerSize(32, 16, num_blocks=1, num_layers=1, d_model=32, nhead=4, d_ffn=64, chunk_size=50),
    "convtasnet": ConvTasNetSize(32, 16, B=32, H=64, P=3, X=2, R=1),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured configuration."""

    model: str  # "sepformer" or "convtasnet"
    block: str  # key of BLOCKS for SepFormer, of MASKNETS for ConvTasNet
    mode: str  # "train" (forward + backward + Adam step) or "inference" (no_grad forward)
    precision: str  # key of PRECISIONS
    seconds: float  # mixture duration
    device: str
    quick: bool
    demo: bool = False  # ConvTasNet at the demo's sizes and batch instead of the upstream sizes
    batch: int = 1


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What one configuration measured, or why it failed."""

    median_ms: float | None = None
    peak_mib: float | None = None
    error: str | None = None


class MaskingSeparator(nn.Module):
    """Encoder -> one mask per speaker -> decoder, as SpeechBrain's separation recipes wire them."""

    def __init__(self, encoder: nn.Module, masknet: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.masknet = masknet
        self.decoder = decoder

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """mixture [batch, time] -> est_sources [batch, time, num_spks]."""
        mixture_w = self.encoder(mixture)  # [batch, N, frames]
        est_masks = self.masknet(mixture_w)  # [num_spks, batch, N, frames]
        est_sources = torch.stack([self.decoder(mixture_w * mask) for mask in est_masks], dim=-1)
        missing = mixture.shape[1] - est_sources.shape[1]
        if missing > 0:
            return F.pad(est_sources, (0, 0, 0, missing))
        return est_sources[:, : mixture.shape[1]]


DemoConfig = namedtuple("DemoConfig", "sizes batch seconds")


@lru_cache
def demo_config() -> DemoConfig:
    """`hparams/demo.yaml`'s Conv-TasNet sizes and training batch (mixtures, seconds per crop), read from the config."""
    with tempfile.TemporaryDirectory() as folder:
        hparams = load_hparams(HPARAMS / "demo.yaml", {"data_folder": folder, "output_folder": folder})
    sizes = ConvTasNetSize(hparams["N_encoder_out"], hparams["kernel_size"], *(hparams[key] for key in "BHPXR"))
    return DemoConfig(sizes, hparams["batch_size"], hparams["training_signal_len"] / hparams["sample_rate"])


def separator_from_config(config: str) -> MaskingSeparator:
    """The encoder, mask network and decoder of `hparams/<config>.yaml` at its sizes, as train.py builds them."""
    with tempfile.TemporaryDirectory() as folder:
        hparams = load_hparams(HPARAMS / f"{config}.yaml", {"data_folder": folder, "output_folder": folder})
    return MaskingSeparator(hparams["modules"]["encoder"], hparams["modules"]["masknet"], hparams["modules"]["decoder"])


def build_separator(model: str, block: str, quick: bool, demo: bool = False) -> MaskingSeparator:
    """SepFormer (with the given transformer block) or ConvTasNet (with the given mask network), at upstream,
    tiny or (ConvTasNet) demo sizes; with block CONFIG_BLOCK, the config `model` of hparams/."""
    if block == CONFIG_BLOCK:
        return separator_from_config(model)
    sizes = demo_config().sizes if demo else (TINY_SIZES if quick else FULL_SIZES)[model]
    encoder_channels, kernel_size = sizes.encoder_channels, sizes.kernel_size
    if model == "sepformer":
        block_kwargs = dict(
            num_layers=sizes.num_layers,
            d_model=sizes.d_model,
            nhead=sizes.nhead,
            d_ffn=sizes.d_ffn,
            dropout=0.0,
            use_positional_encoding=True,
            norm_before=True,
        )
        masknet = Dual_Path_Model(
            in_channels=encoder_channels,
            out_channels=sizes.d_model,
            intra_model=BLOCKS[block](**block_kwargs),
            inter_model=BLOCKS[block](**block_kwargs),
            num_layers=sizes.num_blocks,
            norm="ln",
            K=sizes.chunk_size,
            num_spks=NUM_SPKS,
            skip_around_intra=True,
            linear_layer_after_inter_intra=False,
        )
    elif model == "convtasnet":
        masknet = MASKNETS[block](N=encoder_channels, B=sizes.B, H=sizes.H, P=sizes.P, X=sizes.X, R=sizes.R, C=NUM_SPKS)
    else:
        raise ValueError(f"unknown model {model!r}, expected 'sepformer' or 'convtasnet'")
    return MaskingSeparator(
        Encoder(kernel_size=kernel_size, out_channels=encoder_channels),
        masknet,
        Decoder(
            in_channels=encoder_channels, out_channels=1, kernel_size=kernel_size, stride=kernel_size // 2, bias=False
        ),
    )


def _peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far: allocated by torch on GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def _current_memory_mib(device: torch.device) -> float:
    """Memory in use now: allocated by torch on GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _make_step(case: Case, separator: MaskingSeparator, device: torch.device) -> Callable[[], None]:
    """The callable to time: a training step or an inference forward, under autocast if asked."""
    num_samples = int(case.seconds * SAMPLE_RATE)
    mixture = torch.randn(case.batch, num_samples, device=device)  # [batch, time]
    sources = torch.randn(case.batch, num_samples, NUM_SPKS, device=device)  # [batch, time, num_spks]
    dtype = PRECISIONS[case.precision]

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    if case.mode == "inference":
        separator.eval()

        def step():
            with torch.no_grad(), autocast():
                separator(mixture)

        return step

    separator.train()
    optimizer = torch.optim.Adam(separator.parameters(), lr=1.5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = get_si_snr_with_pitwrapper(sources, separator(mixture)).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def measure(case: Case, warmup: int, repeats: int) -> Measurement:
    """Times `case` in this process; meant to run in a fresh one (see `measure_in_subprocess`)."""
    device = torch.device(case.device)
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    separator = build_separator(case.model, case.block, case.quick, case.demo).to(device)
    step = _make_step(case, separator, device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline_mib = _current_memory_mib(device)

    times = time_steps(step, warmup, repeats, synchronize)
    return Measurement(
        median_ms=1e3 * statistics.median(times),
        peak_mib=_peak_memory_mib(device) - baseline_mib,
    )


def _failure(error: Exception) -> Measurement:
    """A one-line reason for the table; the other cases still run."""
    return Measurement(error=f"{type(error).__name__}: {error}".splitlines()[0][:200])


def _measure_or_report(case: Case, warmup: int, repeats: int) -> Measurement:
    try:
        return measure(case, warmup, repeats)
    except Exception as error:
        traceback.print_exc()
        return _failure(error)


def measure_in_subprocess(case: Case, warmup: int, repeats: int) -> Measurement:
    """Runs `measure` in a freshly spawned process, so peak memory is this case's alone."""
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(_measure_or_report, case, warmup, repeats).result()
    except Exception as error:  # e.g. the process was killed for memory
        return _failure(error)


# How profiler op names group into the parts of a transformer step (self CPU time, forward and backward).
LINEAR_OPS = ("aten::mm", "aten::addmm")
ATTENTION_OPS = ("aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data", "scaled_dot_product")


def profile_breakdown(case: Case, warmup: int = 1) -> dict[str, float]:
    """Share of one step's self CPU time in linear-layer matmuls, in attention, and elsewhere.

    Both blocks run the very same linear layers, so the linear share bounds what any attention
    kernel can gain: speed-up <= 1 / (1 - attention share).
    """
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    separator = build_separator(case.model, case.block, case.quick)
    step = _make_step(case, separator, torch.device(case.device))
    for _ in range(warmup):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        step()
    totals = {"linear": 0.0, "attention": 0.0, "other": 0.0}
    for event in profiler.key_averages():
        if event.key.startswith("aten::") or "scaled_dot_product" in event.key:
            group = (
                "linear"
                if event.key in LINEAR_OPS
                else "attention"
                if any(name in event.key for name in ATTENTION_OPS)
                else "other"
            )
            totals[group] += event.self_cpu_time_total
    total = sum(totals.values())
    return {group: value / total for group, value in totals.items()}


def _breakdown_or_report(case: Case) -> dict[str, float] | None:
    try:
        return profile_breakdown(case)
    except Exception:
        traceback.print_exc()
        return None


def breakdown_section(quick: bool) -> str:
    """Where a SepFormer training step spends its CPU time, with each block (fresh process each)."""
    seconds = 0.5 if quick else 4.0
    rows = []
    context = multiprocessing.get_context("spawn")
    for block in BLOCKS:
        case = Case("sepformer", block, "train", "fp32", seconds, "cpu", quick)
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            shares = pool.submit(_breakdown_or_report, case).result()
        if shares is None:
            rows.append(f"| {block} | failed | — | — | — |")
            continue
        rows.append(
            f"| {block} | {shares['linear']:.0%} | {shares['attention']:.0%} | {shares['other']:.0%} "
            f"| {1 / (1 - shares['attention']):.2f}x |"
        )
    return section(
        "### Where a SepFormer training step spends its time (CPU, fp32)",
        f"One profiled training step (`torch.profiler`, self CPU time of aten ops), {seconds:g} s mixture, same "
        "sizes as above. *linear* = `mm`/`addmm` (projections and feed-forward layers, identical in both "
        "blocks); *attention* = `bmm`, softmax and the fused `scaled_dot_product_attention` kernels; *other* = "
        "norms, convolutions, element-wise ops, optimizer. The last column is the speed-up a block would get "
        "if its attention cost nothing: 1 / (1 - attention share).",
        "block | linear | attention | other | bound on any attention speed-up",
        rows,
    )


def _format(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(reference: float | None, value: float | None) -> str:
    if reference is None or value is None or value <= 0:
        return "—"
    return f"{reference / value:.2f}x"


TABLE_HEADER = (
    "model | block / mask network | precision | mode | batch x mixture (s) | median time (ms) "
    "| peak memory (MiB) | speed-up (SpeechBrain time / ours) | memory (SpeechBrain / ours)"
)


def _rows(results: dict[Case, Measurement]) -> list[str]:
    """Rows under TABLE_HEADER; a row of our block or mask network has SpeechBrain's time and memory over ours."""
    rows = []
    for case, result in results.items():
        speed_up = memory_ratio = "—"
        if case.block != "speechbrain":
            reference = results.get(dataclasses.replace(case, block="speechbrain"))
            if reference is not None:
                speed_up = _ratio(reference.median_ms, result.median_ms)
                memory_ratio = _ratio(reference.peak_mib, result.peak_mib)
        timing = _format(result.median_ms, 1) if result.error is None else f"failed: {result.error}"
        model = f"{case.model} (demo size)" if case.demo else case.model
        rows.append(
            f"| {model} | {case.block} | {case.precision} | {case.mode} | {case.batch} x {case.seconds:g} "
            f"| {timing} | {_format(result.peak_mib, 1)} | {speed_up} | {memory_ratio} |"
        )
    return rows


MODELS = ("sepformer", "convtasnet", "configs")


def cases(device: str, quick: bool, model: str) -> list[Case]:
    """Every configuration of `model` to measure, SpeechBrain's block or mask network right before ours; for
    "configs", a training step of every mask network config of hparams/."""
    if model == "configs":
        return [
            Case(config, CONFIG_BLOCK, "train", "fp32", 0.5 if quick else 2.0, device, quick)
            for config in RECIPE_CONFIGS
        ]
    precisions = ["fp32", "bf16", "fp16"] if device.startswith("cuda") else ["fp32", "bf16"]
    seconds = 0.5 if quick else 4.0
    variants = BLOCKS if model == "sepformer" else MASKNETS
    measured = [
        Case(model, variant, mode, precision, seconds, device, quick)
        for precision in precisions
        for mode in ["train", "inference"]
        for variant in variants
    ]
    if model == "convtasnet":  # the demo's training step (hparams/demo.yaml); tiny sizes with --quick
        _, batch, seconds = demo_config()
        measured += [
            Case(model, masknet, "train", precision, seconds, device, quick, demo=not quick, batch=batch)
            for precision in precisions
            for masknet in MASKNETS
        ]
    if model == "sepformer" and device.startswith("cuda"):  # where attention memory matters: a long mixture
        long_seconds = 1.0 if quick else 10.0
        measured += [
            Case(model, block, "train", precision, long_seconds, device, quick)
            for precision in precisions
            for block in BLOCKS
        ]
    return measured


TITLES = {
    "sepformer": "## SepFormer: SpeechBrain's transformer block vs ours",
    "convtasnet": "## ConvTasNet: SpeechBrain's mask network vs ours",
    "configs": "## Every model config at its own size: training step",
}
NOTES = {
    "sepformer": "",
    "configs": (
        " Each row is a config of `hparams/` (sizes from the published SpeechBrain recipes) built with stock "
        "HyperPyYAML and sped up where exact, as `train.py` trains it; `--quick` keeps these sizes."
    ),
    "convtasnet": (
        " *ours* is SpeechBrain's network in a channels-first layout (PReLU, reflection padding: same weights, "
        "same outputs); *ours, relu + zeros* is the variant `hparams/demo.yaml` trains. The *demo size* rows "
        "are the demo's training step: its Conv-TasNet (N={0.encoder_channels}, L={0.kernel_size}, B={0.B}, "
        "H={0.H}, X={0.X}, R={0.R}) on a batch of {1} crops of {2:g} s."
    ),
}


def run(quick: bool = False, device: str | None = None, models: tuple[str, ...] = MODELS) -> str:
    """Measures every case, each in a fresh process, and returns a markdown section per model."""
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}, expected some of {list(MODELS)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quick:
        warmup, repeats = 1, 1
    else:  # a full-size CPU training step takes seconds, a GPU one tens of milliseconds
        warmup, repeats = (1, 3) if device == "cpu" else (3, 10)
    threads = f", {len(os.sched_getaffinity(0))} CPU threads" if device == "cpu" else ""
    sizes = "tiny smoke-test sizes (--quick)" if quick else "the upstream WSJ0-2mix recipe sizes"
    memory = "`torch.cuda.max_memory_allocated`" if device.startswith("cuda") else "RSS (`getrusage`)"
    demo = demo_config()
    sections = []
    for model in models:
        results = {case: measure_in_subprocess(case, warmup, repeats) for case in cases(device, quick, model)}
        intro = (
            f"Batch of 1 mixture at {SAMPLE_RATE} Hz, {NUM_SPKS} speakers, models at {sizes}, on `{device}`"
            f"{threads}. *train* = forward + PIT SI-SNR loss + backward + Adam step (fp16 with a GradScaler); "
            "*inference* = forward under `torch.no_grad()`; bf16/fp16 are `torch.autocast`. "
            f"Median of {repeats} repeat(s) after {warmup} warm-up step(s). Peak memory: peak {memory} minus "
            "the memory in use once the model and inputs are built (so it includes activations, gradients "
            f"and Adam states); each configuration runs in a fresh process.{NOTES[model].format(*demo)}"
        )
        sections.append(section(TITLES[model], intro, TABLE_HEADER, _rows(results)))
        if model == "sepformer" and device == "cpu":
            sections.append(breakdown_section(quick))
    return "\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, one repeat: a smoke test")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    args = parser.parse_args()
    print(run(quick=args.quick, device=args.device, models=tuple(args.models.split(","))))


if __name__ == "__main__":
    main()
