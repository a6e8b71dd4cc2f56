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
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import torch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from bench.markdown import section
from bench.separators import (
    BLOCKS,
    CONFIG_BLOCK,
    MASKNETS,
    NUM_SPKS,
    RECIPE_CONFIGS,
    SAMPLE_RATE,
    MaskingSeparator,
    build_separator,
    demo_config,
)
from bench.timing import time_steps

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
