"""GPU figures in one run, written to bench/RESULTS-gpu.md: model training and inference steps, train.py under
mixed precision, and separate.py's real-time factor on a long recording.

    make gpu-check                                    # python -m bench.gpu_check --device cuda --budget-s 420
    python -m bench.gpu_check --device cpu --quick    # tiny sizes: the test suite's smoke test of this script

GPU time comes scarce, so the check runs most wanted first and never needs a second try: `--budget-s` is checked
before each measurement, and what did not fit is written as "not measured (budget)". The figures have a file of
their own because `make bench` rewrites bench/RESULTS.md whole (its header links to this one).
"""

import argparse
import dataclasses
import gc
import itertools
import math
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_inference import measure as separate_in_fresh_process
from bench.bench_inference import write_model, write_recording
from bench.bench_models import Case, measure
from bench.markdown import section
from bench.run_all import GPU_RESULTS, header
from bench.separators import FULL_SIZES, TINY_SIZES

SAMPLE_RATE = 8000
NUM_SPKS = 2
MODELS = ("sepformer", "convtasnet")
BLOCKS = ("speechbrain", "ours")
PRECISIONS = ("fp32", "bf16", "fp16")
NOT_MEASURED = "not measured (budget)"
NA_ON_CPU = "n/a on CPU"
SEPARATE_BATCH_SIZES = (1, 4)  # windows per forward pass
# bench_models' size names that the recipes' YAML calls otherwise; the others are the same.
RECIPE_KEYS = {"encoder_channels": "N_encoder_out", "d_model": "out_channels"}


def model_sizes(model: str, quick: bool) -> dict:
    """Config overrides for bench_models' published (or, quick, tiny) sizes of `model`."""
    sizes = (TINY_SIZES if quick else FULL_SIZES)[model]
    return {RECIPE_KEYS.get(name, name): value for name, value in sizes._asdict().items()}


def steps_section(device: str, quick: bool, deadline: float) -> str:
    """SpeechBrain's block or mask network against ours, per precision, mode and batch, measured in this process."""
    warmup, repeats = (1, 2) if quick else (3, 10)
    seconds = 0.5 if quick else 4.0
    cuda = device.startswith("cuda")
    if cuda:  # the CUDA context and cuBLAS workspace now, not in the first case's peak memory
        weight = torch.ones(64, 64, device=device, requires_grad=True)
        (weight @ weight).sum().backward()
    results = {}
    for model, mode, batch, precision, block in itertools.product(
        MODELS, ("train", "inference"), (1, 4), PRECISIONS, BLOCKS
    ):
        case = Case(model, block, mode, precision, seconds, device, quick, batch=batch)
        if precision == "fp16" and not cuda:
            results[case] = NA_ON_CPU
        elif time.time() >= deadline:
            results[case] = NOT_MEASURED
        else:
            try:
                results[case] = measure(case, warmup, repeats)
            except Exception as error:  # e.g. out of memory: this row says so, the others are measured
                results[case] = f"failed: {type(error).__name__}: {error}".splitlines()[0][:160]
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    rows = []
    for case, result in results.items():
        if isinstance(result, str):
            rows.append(
                f"| {case.model} | {case.block} | {case.precision} | {case.mode} | {case.batch} | {result} | | |"
            )
            continue
        memory = f"{result.peak_mib:,.1f}" if cuda else "—"
        reference = results[dataclasses.replace(case, block="speechbrain")]
        speed_up = "—"
        if case.block == "ours" and not isinstance(reference, str):
            speed_up = f"{reference.median_ms / result.median_ms:.2f}x"
        rows.append(
            f"| {case.model} | {case.block} | {case.precision} | {case.mode} | {case.batch} "
            f"| {result.median_ms:,.1f} | {memory} | {speed_up} |"
        )
    return section(
        "## Training and inference steps: SpeechBrain's block vs ours",
        f"`bench.bench_models` cases on `{device}`: {seconds:g} s two-speaker mixtures at {SAMPLE_RATE} Hz, models at "
        f"{'tiny smoke-test sizes (--quick)' if quick else 'the published WSJ0-2mix sizes'}. *speechbrain*: "
        "SpeechBrain's transformer block (SepFormer) or mask network (Conv-TasNet); *ours*: the recipe's. *train*: "
        "forward, PIT SI-SNR loss, backward, Adam step (fp16 with a GradScaler); *inference*: forward without "
        f"gradients; bf16 and fp16 are autocast. Median of {repeats} steps after {warmup} warm-up step(s); peak "
        "memory: `torch.cuda.max_memory_allocated` above what the model and inputs hold (GPU only). Speed-up: "
        "SpeechBrain's time / ours.",
        "model | block | precision | mode | batch | median step (ms) | peak memory (MiB) | speed-up vs speechbrain",
        rows,
    )


def write_tree(root: Path, train_files: int, seconds: float, seed: int = 0) -> Path:
    """A custom-layout corpus `<root>/{train,valid,test}/{mixture,source1,source2}/*.wav` of speech-like signals."""
    import soundfile as sf

    from tests.speech import speech_like_mixture

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_files), ("valid", 2), ("test", 2)):
        for index in range(count):
            mixture, sources = speech_like_mixture(int(seconds * SAMPLE_RATE), NUM_SPKS, SAMPLE_RATE, rng)
            for folder, signal in {"mixture": mixture, "source1": sources[:, 0], "source2": sources[:, 1]}.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                sf.write(root / split / folder / f"utt{index:03d}.wav", signal.astype(np.float32), SAMPLE_RATE)
    return root


def log_stats(text: str, prefix: str) -> dict[str, str]:
    """`prefix key: value` pairs of a FileTrainLogger line, e.g. prefix "train" -> {"si-snr": "3.1", ...}."""
    return dict(re.findall(rf"\b{prefix} ([\w-]+): ([^,\s]+)", text))


def gradscaler_scale(output: Path) -> float | None:
    """The GradScaler's scale in the last checkpoint (fp16 only): each overflow-skipped step halves it."""
    checkpoints = sorted(output.glob("save/CKPT+*/scaler.ckpt"))
    if not checkpoints:
        return None
    return float(torch.load(checkpoints[-1], map_location="cpu", weights_only=True)["scale"])


def train_run_row(precision: str, device: str, quick: bool, data: Path, output: Path, deadline: float) -> str:
    """One epoch of train.py (batch 1), validation and test, in its own process: what its logs say."""
    options = {"N_epochs": 1, "batch_size": 1, "use_speedperturb": False, "num_workers": 0, "save_audio": False}
    command = [
        sys.executable, "train.py", "hparams/sepformer.yaml", f"--data_folder={data}", f"--output_folder={output}",
        f"--precision={precision}", f"--device={device}", "--noprogressbar",
        *[f"--{key}={value}" for key, value in {**options, **model_sizes("sepformer", quick)}.items()],
    ]  # fmt: skip
    start = time.time()
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=max(deadline - start, 0.1))
    except subprocess.TimeoutExpired:
        return f"| {precision} | {NOT_MEASURED} | | | | | | |"
    if run.returncode != 0:
        reason = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1][:160]
        return f"| {precision} | failed: {reason} | | | | | | |"
    log = (output / "train_log.txt").read_text()
    train, valid, test = log_stats(log, "train"), log_stats(log, "valid"), log_stats(log, "test")
    scale = gradscaler_scale(output)
    if scale is not None:
        overflows = str(round(math.log2(65536.0 / scale)))
    else:  # bf16 runs without a scaler; an fp16 run must have checkpointed one
        overflows = "unknown (no scaler.ckpt)" if precision == "fp16" else "— (no GradScaler)"
    nan = "yes" if re.search(r"\bnan\b", log, re.IGNORECASE) else "no"
    return (
        f"| {precision} | ok, {time.time() - start:.0f} s | {train.get('skipped_batches')} | {overflows} | {nan} "
        f"| {train.get('si-snr')} | {valid.get('si-snr')} | {test.get('si-snr')} |"
    )


def train_runs_section(device: str, quick: bool, deadline: float) -> str:
    """train.py in every mixed precision the device has, on a small generated tree."""
    steps = 2 if quick else 20
    precisions = ("fp16", "bf16") if device.startswith("cuda") else ("bf16",)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_tree(Path(tmp) / "data", steps, 1.0 if quick else 4.0)
        rows = [
            train_run_row(precision, device, quick, data, Path(tmp) / f"out-{precision}", deadline)
            if time.time() < deadline
            else f"| {precision} | {NOT_MEASURED} | | | | | | |"
            for precision in precisions
        ]
    return section(
        "## train.py under mixed precision",
        f"`python train.py hparams/sepformer.yaml --precision=<p> --device={device}` on a generated custom tree "
        f"({steps} training mixtures, batch 1: {steps} steps, then validation and test on 2 mixtures each), SepFormer "
        f"at {'tiny' if quick else 'published'} size, random init. *Skipped batches*: train.py's count of batches it "
        "did not back-propagate. *GradScaler overflows*: steps the scaler skipped for inf/NaN gradients, "
        "log2(65536 / final scale). *NaN*: whether `nan` appears in train_log.txt. SI-SNR in dB.",
        "precision | run (wall time) | skipped batches | GradScaler overflows | NaN | train si-snr | valid si-snr "
        "| test si-snr",
        rows,
    )


def separate_section(device: str, quick: bool, deadline: float) -> str:
    """separate.py's real-time factor on a long recording, through bench_inference's fresh-process worker."""
    seconds = 10.0 if quick else 600.0
    models = ("sepformer",) if quick else MODELS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recording = write_recording(tmp / "input.wav", seconds)
        for model, batch_size in itertools.product(models, SEPARATE_BATCH_SIZES):
            cells = f"| {model} | {batch_size} | {seconds / 60:.3g} |"
            if time.time() >= deadline:
                rows.append(f"{cells} {NOT_MEASURED} | | |")
                continue
            model_dir = tmp / model
            if not model_dir.is_dir():
                write_model(model_dir, model_sizes(model, quick), config=f"{model}.yaml")
            report = separate_in_fresh_process(
                model_dir, recording, tmp / f"out-{model}-{batch_size}", batch_size, device
            )
            if "error" in report:
                rows.append(f"{cells} failed: {report['error']} | | |")
                continue
            rtf = report["elapsed"] / report["audio_seconds"]
            rows.append(f"{cells} {rtf:.4f} | {report['elapsed']:.1f} | {report['peak_rss_mib']:.0f} |")
    return section(
        "## separate.py real-time factor",
        f"One {seconds / 60:.3g}-minute {SAMPLE_RATE} Hz two-speaker recording separated on `{device}` with "
        "separate.py's defaults, one window or a batch of windows per forward pass, read and written as files, "
        f"{'tiny' if quick else 'published-size'} models with random weights, in a fresh process "
        "(`bench.bench_inference`'s worker). RTF = separation time / audio duration, model loading excluded.",
        "model | windows per pass | input (min) | RTF | time (s) | peak RSS (MiB)",
        rows,
    )


def device_line(device: str) -> str:
    """The CUDA stack the GPU figures depend on: driver, CUDA, cuDNN, and whether fp32 matmuls use TF32."""
    import speechbrain  # noqa: F401  (its import turns TF32 on, as in every measurement here)

    if not device.startswith("cuda"):
        return "- Device: CPU (no GPU figures)"
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = "unknown (no nvidia-smi)"
    properties = torch.cuda.get_device_properties(torch.device(device))
    return (
        f"- Device: {properties.name}, {properties.total_memory / 2**30:.0f} GiB; driver {driver}; CUDA "
        f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; TF32 matmuls in fp32: "
        f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} (SpeechBrain's `allow_tf32` quirk)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--quick", action="store_true", help="tiny models, short signals, few steps: a smoke test")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no measurement after this many seconds")
    parser.add_argument("--output", type=Path, default=GPU_RESULTS, help="report path")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU (torch.cuda.is_available() is False)")

    start = time.time()
    deadline = start + args.budget_s
    sections = [
        steps_section(device, args.quick, deadline),
        train_runs_section(device, args.quick, deadline),
        separate_section(device, args.quick, deadline),
    ]
    command = shlex.join(["python", "-m", "bench.gpu_check", *(argv if argv is not None else sys.argv[1:])])
    quick = ["- **--quick: tiny sizes and few steps, a smoke test of the check, not figures**"] if args.quick else []
    lines = (device_line(device), f"- Budget: {args.budget_s:g} s, measuring took {time.time() - start:.0f} s", *quick)
    text = "\n".join([header(command, lines, title="# GPU check"), *sections])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text.rstrip() + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
