"""GPU figures in one prepared run: training steps, AMP training runs, test scoring and separate.py's speed.

GPU time comes scarce and short, so this check is proven on CPU (`--device cpu --quick`, which the test suite
runs) and then run once on the GPU to measure, not to debug. Run plan on a fresh GPU machine, from the
repository root, install then measure in one go:

    make gpu-check
    # the same without make:
    python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \\
        && .venv/bin/python bench/gpu_check.py --device cuda --budget-s 420

On a machine whose Python already has the pinned packages (no network, say), skip the install:
`python3 bench/gpu_check.py --device cuda --budget-s 420`. The figures go to bench/RESULTS-gpu.md, a file of
their own because `make bench` rewrites bench/RESULTS.md (whose header links to this one).

What is measured, most wanted first, so that a short budget still answers the main question:

1. SepFormer training steps through the recipe's own `Separation.fit_batch` (forward, PIT SI-SNR loss,
   backward, GradScaler unscale, clipping, Adam step) at the published size, 4 s at 8 kHz, batch 1 and 4,
   fp32 / bf16 / fp16, with SpeechBrain's transformer block and with ours; plus the anchor: upstream
   SpeechBrain's configuration as its recipe runs it (its block, its encoder and decoder, its
   `get_si_snr_with_pitwrapper` loss, fp32). Median step time after warm-up and peak memory.
2. A 20-step `train.py` run on a small generated tree in fp16 and in bf16: exit status, skipped batches,
   GradScaler overflows, NaN in the log.
3. The same training steps for Conv-TasNet (SpeechBrain's mask network vs ours).
4. Test-set scoring throughput (`speechsep.evaluation.metrics.separation_metrics`) on the device vs on the CPU.
5. `separate.py`'s real-time factor on a 10-minute input at recipe size, one window and four windows per pass.

Every measurement runs in a child process (one per model for the training steps, with
`torch.cuda.reset_peak_memory_stats` before each case): an out-of-memory error costs one row, a crash that
worker's remaining rows, and the budget can stop it. `--budget-s` is checked before each measurement and the
running one is killed when it runs out: what did not fit is listed as "not measured (budget)", and the file is
always written.
"""

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:  # also when run as `python bench/gpu_check.py`
    sys.path.insert(0, str(REPO_ROOT))

from bench.markdown import section  # noqa: E402
from bench.timing import time_steps  # noqa: E402

DEFAULT_OUTPUT = BENCH_DIR / "RESULTS-gpu.md"
SAMPLE_RATE = 8000
NUM_SPKS = 2
MODELS = ("sepformer", "convtasnet")
PRECISIONS = ("fp32", "bf16", "fp16")
BLOCKS = ("speechbrain", "ours")
UPSTREAM = "upstream"  # the anchor's "block": upstream SpeechBrain's recipe configuration
NOT_MEASURED = "not measured (budget)"
SEPARATE_BATCH_SIZES = (1, 4)  # windows per forward pass that separate.py is timed with
NA_ON_CPU = "n/a on CPU"
GOAL_VS_SPEECHBRAIN, GOAL_VS_UPSTREAM = 1.5, 2.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and repeats: the real ones, or `--quick` ones that keep a CPU run well under a minute."""

    device: str
    quick: bool

    @property
    def step_seconds(self) -> float:
        return 0.5 if self.quick else 4.0

    @property
    def batches(self) -> tuple[int, ...]:
        return (1, 4)

    @property
    def warmup_repeats(self) -> tuple[int, int]:
        if self.quick:
            return 1, 2
        return (3, 10) if self.device.startswith("cuda") else (1, 3)

    @property
    def train_steps(self) -> int:
        return 2 if self.quick else 20

    @property
    def train_precisions(self) -> tuple[str, ...]:
        return ("bf16",) if self.device == "cpu" else ("fp16", "bf16")

    @property
    def scoring_utterances(self) -> int:
        return 2 if self.quick else 16

    @property
    def separate_seconds(self) -> float:
        return 10.0 if self.quick else 600.0

    @property
    def separate_models(self) -> tuple[str, ...]:
        return ("sepformer",) if self.quick else MODELS


# bench_models' size names that the recipes' YAML calls otherwise; the others are the same.
RECIPE_KEYS = {"encoder_channels": "N_encoder_out", "d_model": "out_channels"}


def model_sizes(model: str, quick: bool) -> dict:
    """Recipe overrides giving bench_models' upstream (published) or tiny sizes, so the anchor is the same size."""
    from bench.bench_models import FULL_SIZES, TINY_SIZES

    sizes = (TINY_SIZES if quick else FULL_SIZES)[model]
    return {RECIPE_KEYS.get(name, name): value for name, value in sizes._asdict().items()}


def yaml_overrides(values: dict) -> str:
    """Overrides as YAML text (tagged values such as a `!new:` MaskNet stay tags)."""
    return "\n".join(
        f"{key}: {value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items()
    )


# ==================================================================== training steps (worker side)
@dataclasses.dataclass(frozen=True)
class StepCase:
    """One measured training step configuration."""

    model: str  # "sepformer" or "convtasnet"
    block: str  # "speechbrain", "ours" (through train.py's fit_batch) or "upstream" (the anchor)
    precision: str  # fp32, bf16, fp16
    batch: int


def step_cases(model: str, settings: Settings) -> list[StepCase]:
    """The anchor first, then SpeechBrain's block and ours per precision; batch 1 before batch 4."""
    return [
        case
        for batch in settings.batches
        for case in [StepCase(model, UPSTREAM, "fp32", batch)]
        + [StepCase(model, block, precision, batch) for precision in PRECISIONS for block in BLOCKS]
    ]


def speech_batch(batch: int, seconds: float, seed: int = 0):
    """A PaddedBatch of speech-like two-speaker mixtures, as train.py's data pipeline yields them."""
    import torch
    from speechbrain.dataio.batch import PaddedBatch

    from tests.speech import speech_like_mixture

    rng = np.random.default_rng(seed)
    examples = []
    for b in range(batch):
        mixture, sources = speech_like_mixture(int(seconds * SAMPLE_RATE), NUM_SPKS, SAMPLE_RATE, rng)
        example = {"id": f"utt{b}", "mix_sig": torch.tensor(mixture, dtype=torch.float32)}
        example.update({f"s{k + 1}_sig": torch.tensor(sources[:, k], dtype=torch.float32) for k in range(NUM_SPKS)})
        examples.append(example)
    return PaddedBatch(examples)


def recipe_step(case: StepCase, settings: Settings, workdir: Path):
    """A `Separation` brain as train.py builds it, and a step that calls its `fit_batch`."""
    import speechbrain as sb

    from speechsep.models.speechbrain_classes import SPEECHBRAIN_CLASSES, with_speechbrain_classes
    from speechsep.training.config import load_hparams
    from train import Separation

    values = {
        "data_folder": str(workdir),
        "output_folder": str(workdir / "out"),
        "use_speedperturb": False,
        "num_workers": 0,
        **model_sizes(case.model, settings.quick),
    }
    config = REPO_ROOT / "hparams" / f"{case.model}.yaml"  # ours: the config's classes
    if case.block == "speechbrain":  # the same model with SpeechBrain's block or mask network (same encoder/decoder)
        masknet_classes = tuple(name for name in SPEECHBRAIN_CLASSES if ".filterbank." not in name)
        text = with_speechbrain_classes(config.read_text(), masknet_classes)
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / config.name
        config.write_text(text)
    hparams = load_hparams(config, yaml_overrides(values))
    brain = Separation(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts={"device": settings.device, "precision": case.precision, "eval_precision": "fp32"},
        checkpointer=None,
    )
    brain.init_optimizers()
    brain.nonfinite_count = 0
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    batch = speech_batch(case.batch, settings.step_seconds)

    def step():
        brain.step += 1
        brain.fit_batch(batch)

    return step, lambda: brain.nonfinite_count


def upstream_step(case: StepCase, settings: Settings):
    """Upstream SpeechBrain's WSJ0Mix training step: its modules and loss, threshold-by-loss, clip 5, Adam, fp32."""
    import torch
    from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

    from bench.bench_models import build_separator

    device = torch.device(settings.device)
    separator = build_separator(case.model, "speechbrain", settings.quick).to(device).train()
    optimizer = torch.optim.Adam(separator.parameters(), lr=1.5e-4)
    batch = speech_batch(case.batch, settings.step_seconds)
    skipped = [0]

    def step():
        mixture = batch.mix_sig.data.to(device)
        sources = torch.stack([batch.s1_sig.data, batch.s2_sig.data], dim=-1).to(device)
        loss = get_si_snr_with_pitwrapper(sources, separator(mixture))
        loss = loss[loss > -30]  # upstream's threshold_byloss
        if loss.nelement() > 0 and loss.mean() < 999999:
            loss = loss.mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(separator.parameters(), 5)
            optimizer.step()
            loss.detach().cpu()
        else:
            skipped[0] += 1
        optimizer.zero_grad()

    return step, lambda: skipped[0]


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux `clear_refs` 5), so the next peak is one case's alone."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    raise OSError("no VmHWM in /proc/self/status")


def measure_step(case: StepCase, settings: Settings, workdir: Path) -> dict:
    """Median step time after warm-up, and peak memory above what the model and batch hold once built."""
    import torch

    cuda = settings.device.startswith("cuda")
    torch.manual_seed(0)
    if case.block == UPSTREAM:
        step, skipped = upstream_step(case, settings)
    else:
        step, skipped = recipe_step(case, settings, workdir)
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    gc.collect()
    if cuda:
        synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        if not _reset_peak_rss():
            raise OSError("cannot reset the peak RSS (/proc/self/clear_refs)")
        baseline = _rss_mib()
    times = time_steps(step, *settings.warmup_repeats, synchronize)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib()
    return {"median_ms": 1e3 * statistics.median(times), "peak_mib": peak - baseline, "skipped": skipped()}


def steps_worker(spec: dict) -> None:
    """Measure each case of `spec` in turn (one JSON line each), while the deadline allows."""
    import torch

    settings = Settings(spec["device"], spec["quick"])
    if settings.device.startswith("cuda"):  # CUDA context and cuBLAS workspace now, not in the first case's peak
        weight = torch.ones(64, 64, device=settings.device, requires_grad=True)
        (weight @ weight).sum().backward()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        for index, fields in enumerate(spec["cases"]):
            case = StepCase(**fields)
            if time.time() >= spec["deadline"]:
                return
            try:
                result = measure_step(case, settings, Path(tmp) / str(index))
            except Exception as error:  # e.g. out of memory: say so in its row, measure the next case
                result = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:160]}
            print("RESULT " + json.dumps({"case": fields, **result}), flush=True)
            gc.collect()
            if settings.device.startswith("cuda"):
                torch.cuda.empty_cache()


# ==================================================================== scoring throughput (worker side)
def scoring_worker(spec: dict) -> None:
    """Milliseconds per utterance of the test-set metrics on the CPU and on the device, batch 1 and batched."""
    import torch

    from speechsep.evaluation.metrics import separation_metrics
    from tests.speech import mask_separation_example

    count = spec["utterances"]
    examples = [mask_separation_example(NUM_SPKS, 4 * SAMPLE_RATE, SAMPLE_RATE, seed) for seed in range(count)]
    mixture, sources, est_sources = (torch.tensor(np.stack(signals), dtype=torch.float32) for signals in zip(*examples))
    devices = ["cpu"] + ([spec["device"]] if spec["device"] != "cpu" else [])
    for device in devices:
        synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        on_device = [tensor.to(device) for tensor in (mixture, sources, est_sources)]
        for batch in (1, count):
            if time.time() >= spec["deadline"]:
                return
            separation_metrics(*(tensor[:batch] for tensor in on_device))  # warm-up
            synchronize()
            start = time.perf_counter()
            for first in range(0, count - batch + 1, batch):
                separation_metrics(*(tensor[first : first + batch] for tensor in on_device))
            synchronize()
            ms = 1e3 * (time.perf_counter() - start) / (count - count % batch)
            print("RESULT " + json.dumps({"device": device, "batch": batch, "ms_per_utterance": ms}), flush=True)


WORKERS = {"steps": steps_worker, "scoring": scoring_worker}


# ==================================================================== running workers (main side)
def run_until(command: list[str], deadline: float, cwd: Path = REPO_ROOT) -> tuple[int | None, str, str]:
    """Run `command` until it ends or the deadline passes (then its process group is killed).

    Returns (exit status or None if stopped at the deadline, stdout, stderr).
    """
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=max(deadline - time.time(), 0.1))
        return process.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return None, stdout, stderr


def run_worker(kind: str, spec: dict, deadline: float) -> tuple[list[dict], str | None]:
    """The JSON results a worker printed, and why it stopped early (None if it finished)."""
    command = [sys.executable, __file__, "--worker", kind, json.dumps({**spec, "deadline": deadline})]
    returncode, stdout, stderr = run_until(command, deadline)
    results = [json.loads(line[len("RESULT ") :]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode is None:
        return results, NOT_MEASURED
    if returncode != 0:
        lines = stderr.strip().splitlines() or [f"exit status {returncode}"]
        return results, f"failed: {lines[-1][:160]}"
    return results, None


def _format(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(reference: dict | None, result: dict) -> float | None:
    if not reference or reference.get("median_ms") is None or not result.get("median_ms"):
        return None
    return reference["median_ms"] / result["median_ms"]


def _ratio_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def measure_steps(model: str, settings: Settings, deadline: float) -> dict[StepCase, dict]:
    """Every training-step case of one model, in one worker: a result, or a status saying why there is none."""
    cases = step_cases(model, settings)
    to_run = [case for case in cases if not (case.precision == "fp16" and settings.device == "cpu")]
    results = {case: {"status": NOT_MEASURED if case in to_run else NA_ON_CPU} for case in cases}
    if time.time() >= deadline:
        return results
    spec = {"device": settings.device, "quick": settings.quick, "cases": [dataclasses.asdict(c) for c in to_run]}
    measured, stopped = run_worker("steps", spec, deadline)
    for item in measured:
        case = StepCase(**item.pop("case"))
        results[case] = {"status": f"failed: {item['error']}"} if "error" in item else item
    for case in to_run[len(measured) :]:
        results[case] = {"status": stopped or NOT_MEASURED}
    return results


def steps_section(results: dict[StepCase, dict], settings: Settings) -> str:
    """The training-step table: time, memory and the two speed-ups of every case."""
    cuda = settings.device.startswith("cuda")
    memory = "`torch.cuda.max_memory_allocated`" if cuda else "peak RSS (VmHWM, reset before each case)"
    warmup, repeats = settings.warmup_repeats
    rows = []
    for case, result in results.items():
        reference = None if case.block != "ours" else results.get(dataclasses.replace(case, block="speechbrain"))
        anchor = None if case.block == UPSTREAM else results.get(StepCase(case.model, UPSTREAM, "fp32", case.batch))
        timing = _format(result.get("median_ms")) if "median_ms" in result else result["status"]
        if result.get("skipped"):
            timing += f" ({result['skipped']} skipped)"
        rows.append(
            f"| {case.model} | {case.block} | {case.precision} | {case.batch} | {timing} "
            f"| {_format(result.get('peak_mib'))} | {_ratio_text(_ratio(reference, result))} "
            f"| {_ratio_text(_ratio(anchor, result))} |"
        )
    return section(
        "## Training step: SpeechBrain's block vs ours, and upstream's recipe as the anchor",
        f"One training step on {settings.step_seconds:g} s two-speaker mixtures at {SAMPLE_RATE} Hz, models at "
        f"{'tiny smoke-test sizes (--quick)' if settings.quick else 'the published WSJ0-2mix sizes'}. *speechbrain* "
        "and *ours* run train.py's `Separation.fit_batch` (autocast, PIT SI-SNR loss, threshold-by-loss, "
        "GradScaler with fp16, unscale, clip 5, Adam) with the recipe's encoder and decoder; the block is "
        "SepFormer's transformer block or Conv-TasNet's mask network (`speechsep.models`). *upstream* is the anchor: "
        "SpeechBrain's recipe configuration as its recipe runs it (SBTransformerBlock or its MaskNet, "
        "`dual_path.Encoder/Decoder`, `get_si_snr_with_pitwrapper`, threshold-by-loss, clip 5, Adam, fp32). "
        f"Speed perturbation off. Median of {repeats} steps after {warmup} warm-up step(s); peak memory: {memory} "
        "minus the memory held once the model and batch are built (activations, gradients, Adam states). "
        "Speed-ups are time ratios (>1: this row is faster).",
        "model | block | precision | batch | median step (ms) | peak memory (MiB) "
        "| speed-up vs speechbrain block | speed-up vs upstream",
        rows,
    )


def goal_summary(results: dict) -> str:
    """The acceptance goal for SepFormer, read off the step table: met, not met, or not measured."""
    lines = [
        f"- Goal: a SepFormer training step (ours) at least {GOAL_VS_SPEECHBRAIN:g}x faster than SpeechBrain's "
        f"block at the same precision and at least {GOAL_VS_UPSTREAM:g}x faster than upstream's recipe "
        "configuration (same batch).",
    ]
    for case, result in results.items():
        if case.model != "sepformer" or case.block != "ours" or "median_ms" not in result:
            continue
        vs_block = _ratio(results.get(dataclasses.replace(case, block="speechbrain")), result)
        vs_upstream = _ratio(results.get(StepCase("sepformer", UPSTREAM, "fp32", case.batch)), result)
        met = (
            "not measured"
            if vs_block is None or vs_upstream is None
            else "met"
            if vs_block >= GOAL_VS_SPEECHBRAIN and vs_upstream >= GOAL_VS_UPSTREAM
            else "**not met**"
        )
        lines.append(
            f"  - {case.precision}, batch {case.batch}: {_ratio_text(vs_block)} vs SpeechBrain's block, "
            f"{_ratio_text(vs_upstream)} vs upstream: {met}"
        )
    return "\n".join(lines)


# ==================================================================== train.py runs (main side)
def write_tree(root: Path, train_files: int, seconds: float, seed: int = 0) -> Path:
    """A custom-layout corpus `<root>/{train,valid,test}/{mixture,source1,source2}/*.wav` of speech-like signals."""
    import soundfile as sf

    from tests.speech import speech_like_mixture

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_files), ("valid", 2), ("test", 2)):
        for index in range(count):
            mixture, sources = speech_like_mixture(int(seconds * SAMPLE_RATE), NUM_SPKS, SAMPLE_RATE, rng)
            signals = {"mixture": mixture, **{f"source{k + 1}": sources[:, k] for k in range(NUM_SPKS)}}
            for folder, signal_ in signals.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                sf.write(
                    root / split / folder / f"utt{index:03d}.wav",
                    signal_.astype(np.float32),
                    SAMPLE_RATE,
                    subtype="FLOAT",
                )
    return root


def log_stats(text: str, prefix: str) -> dict[str, str]:
    """`prefix key: value` pairs of a FileTrainLogger line, e.g. prefix "train" -> {"si-snr": "3.1", ...}."""
    return dict(re.findall(rf"\b{prefix} ([\w-]+): ([^,\s]+)", text))


def gradscaler_scale(output: Path) -> float | None:
    """The GradScaler's scale in the last checkpoint (fp16 only): each overflow-skipped step halves it."""
    import torch

    checkpoints = sorted(output.glob("save/CKPT+*/scaler.ckpt"))
    if not checkpoints:
        return None
    return float(torch.load(checkpoints[-1], map_location="cpu", weights_only=True)["scale"])


def measure_train_run(precision: str, settings: Settings, data: Path, output: Path, deadline: float) -> dict:
    """Train for `train_steps` steps (one epoch, batch 1), validate and test with train.py; what its logs say."""
    steps = settings.train_steps
    options = {
        "N_epochs": 1,
        "batch_size": 1,
        "use_speedperturb": False,
        "num_workers": 0,
        "save_audio": False,
        **model_sizes("sepformer", settings.quick),
    }
    command = [
        sys.executable,
        "train.py",
        "hparams/sepformer.yaml",
        f"--data_folder={data}",
        f"--output_folder={output}",
        f"--precision={precision}",
        f"--device={settings.device}",
        "--noprogressbar",
        *[f"--{key}={value}" for key, value in options.items()],
    ]
    start = time.time()
    returncode, stdout, stderr = run_until(command, deadline)
    result = {"seconds": time.time() - start, "steps": steps}
    if returncode is None:
        return {**result, "status": NOT_MEASURED}
    if returncode != 0:
        reason = (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1][:160]
        return {**result, "status": f"failed: {reason}"}
    log = (output / "train_log.txt").read_text()
    run_log = (output / "log.txt").read_text() if (output / "log.txt").is_file() else stdout + stderr
    train, valid, test = log_stats(log, "train"), log_stats(log, "valid"), log_stats(log, "test")
    scale = gradscaler_scale(output)
    return {
        **result,
        "status": "ok",
        "train_si_snr": train.get("si-snr"),
        "skipped": train.get("skipped_batches"),
        "skip_messages": run_log.count("Skipping batch"),
        "overflows": None if scale is None else round(math.log2(65536.0 / scale)),
        "nan": "yes" if re.search(r"\bnan\b", log, re.IGNORECASE) else "no",
        "valid_si_snr": valid.get("si-snr"),
        "test_si_snr": test.get("si-snr"),
    }


def train_runs_section(settings: Settings, deadline: float) -> str:
    """The table of train.py runs, one per precision."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = None
        for precision in settings.train_precisions:
            if time.time() >= deadline:
                rows.append(f"| {precision} | {settings.train_steps} | {NOT_MEASURED} | | | | | | |")
                continue
            if data is None:
                data = write_tree(Path(tmp) / "data", settings.train_steps, 1.0 if settings.quick else 4.0)
            run = measure_train_run(precision, settings, data, Path(tmp) / f"out-{precision}", deadline)
            if run["status"] != "ok":
                rows.append(f"| {precision} | {run['steps']} | {run['status']} | | | | | | |")
                continue
            overflows = str(run["overflows"])
            if run["overflows"] is None:  # bf16 runs without a scaler; fp16 must have checkpointed one
                overflows = "unknown (no scaler.ckpt)" if precision == "fp16" else "— (no GradScaler)"
            rows.append(
                f"| {precision} | {run['steps']} | ok, {run['seconds']:.0f} s | {run['skipped']} "
                f"({run['skip_messages']} logged) | {overflows} | {run['nan']} | {run['train_si_snr']} "
                f"| {run['valid_si_snr']} | {run['test_si_snr']} |"
            )
    skipped_cpu = " fp16 is not run on CPU (train.py would swap it for bf16)." if settings.device == "cpu" else ""
    return section(
        "## train.py under mixed precision",
        f"`python train.py hparams/sepformer.yaml --precision=<p> --device={settings.device}` on a generated custom "
        f"tree ({settings.train_steps} training mixtures, batch 1: {settings.train_steps} steps, then validation and "
        f"test on 2 mixtures each), SepFormer at {'tiny' if settings.quick else 'published'} size, random init. "
        "*Skipped batches*: train.py's count of batches it did not back-propagate (non-finite or out-of-range "
        "loss), with the number of `Skipping batch` log lines. *GradScaler overflows*: steps the scaler skipped "
        "for inf/NaN gradients, log2(65536 / final scale). *NaN*: whether `nan` appears in train_log.txt. "
        f"SI-SNR in dB.{skipped_cpu}",
        "precision | steps | run (wall time) | skipped batches | GradScaler overflows | NaN | train si-snr "
        "| valid si-snr | test si-snr",
        rows,
    )


# ==================================================================== scoring and separate.py (main side)
def scoring_section(settings: Settings, deadline: float) -> str:
    """Test-set metrics on the CPU vs the device: milliseconds and utterances per second."""
    count = settings.scoring_utterances
    devices = ["cpu"] + ([settings.device] if settings.device != "cpu" else [])
    expected = [(device, batch) for device in devices for batch in (1, count)]
    measured, stopped = ({}, NOT_MEASURED)
    if time.time() < deadline:
        results, stopped = run_worker("scoring", {"device": settings.device, "utterances": count}, deadline)
        measured = {(item["device"], item["batch"]): item["ms_per_utterance"] for item in results}
    cpu_ms = measured.get(("cpu", 1))
    rows = []
    for device, batch in expected:
        ms = measured.get((device, batch))
        if ms is None:
            rows.append(f"| {device} | {batch} | {stopped or NOT_MEASURED} | | |")
            continue
        speed_up = _ratio_text(cpu_ms / ms if cpu_ms else None)
        rows.append(f"| {device} | {batch} | {ms:.1f} | {1e3 / ms:.0f} | {speed_up} |")
    return section(
        "## Test-set scoring throughput",
        f"`speechsep.evaluation.metrics.separation_metrics` (SDR, SDRi, SI-SNR, SI-SNRi) on {count} mask-separated 4 s "
        f"{SAMPLE_RATE} Hz two-speaker utterances, one call per batch, after a warm-up call; the test stage scores "
        "batch 1.",
        "device | batch | ms per utterance | utterances/s | speed-up vs CPU batch 1",
        rows,
    )


def separate_section(settings: Settings, deadline: float) -> str:
    """separate.py's real-time factor on a long recording with its defaults, one window per forward pass and a
    batch of windows, through bench_inference's fresh-process worker."""
    from bench.bench_inference import write_model, write_recording

    seconds = settings.separate_seconds
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recording = write_recording(tmp / "input.wav", seconds) if time.time() < deadline else None
        for model, batch_size in itertools.product(settings.separate_models, SEPARATE_BATCH_SIZES):
            if time.time() >= deadline:
                rows.append(f"| {model} | {batch_size} | {seconds / 60:.3g} | {NOT_MEASURED} | | |")
                continue
            model_dir = write_model(tmp / model, model_sizes(model, settings.quick), config=f"{model}.yaml")
            command = [
                sys.executable,
                str(BENCH_DIR / "bench_inference.py"),
                "--worker",
                str(model_dir),
                str(recording),
                str(tmp / f"out-{model}-{batch_size}"),  # a fresh folder per run: tracks are never overwritten
                str(batch_size),
                settings.device,
            ]
            returncode, stdout, stderr = run_until(command, deadline)
            if returncode is None:
                rows.append(f"| {model} | {batch_size} | {seconds / 60:.3g} | {NOT_MEASURED} | | |")
            elif returncode != 0:
                reason = (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1][:160]
                rows.append(f"| {model} | {batch_size} | {seconds / 60:.3g} | failed: {reason} | | |")
            else:
                report = json.loads(stdout.strip().splitlines()[-1])
                rows.append(
                    f"| {model} | {batch_size} | {seconds / 60:.3g} | {report['elapsed'] / report['audio_seconds']:.4f} "
                    f"| {report['elapsed']:.1f} | {report['peak_rss_mib']:.0f} |"
                )
    return section(
        "## separate.py real-time factor",
        f"One {seconds / 60:.3g}-minute {SAMPLE_RATE} Hz two-speaker recording separated on `{settings.device}` the "
        "way separate.py does with its default window, hop and precision (`--precision auto`: bf16 on GPUs that "
        "have it, else fp16), one window or a batch of windows per forward pass, read and written as files, "
        f"{'tiny' if settings.quick else 'published-size'} models with random weights, in a fresh process "
        "(`bench/bench_inference.py`'s worker). RTF = separation time / audio duration, model loading excluded.",
        "model | windows per pass | input (min) | RTF | time (s) | peak RSS (MiB)",
        rows,
    )


# ==================================================================== the report
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_lines(device: str) -> list[str]:
    """GPU model, driver, CUDA and cuDNN, or the CPU; the versions that matter."""
    import speechbrain  # noqa: F401  (its import sets TF32, as in every worker: report what they ran with)
    import torch

    if device.startswith("cuda"):
        try:
            driver = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                .stdout.strip()
                .splitlines()[0]
            )
        except (OSError, IndexError, subprocess.SubprocessError):
            driver = "unknown (no nvidia-smi)"
        properties = torch.cuda.get_device_properties(torch.device(device))
        tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
        where = [
            f"- GPU: {properties.name}, {properties.total_memory / 2**30:.0f} GiB; driver {driver}; CUDA "
            f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
            f"- TF32 matmuls in the fp32 rows: {tf32} (SpeechBrain's `allow_tf32` quirk, applied on import as in "
            "upstream's recipe; `SB_DISABLE_QUIRKS=allow_tf32` turns it off)",
        ]
    else:
        from bench.run_all import _cpu_model

        where = [f"- Device: CPU, {_cpu_model()}, {len(os.sched_getaffinity(0))} usable cores (no GPU figures)"]
    return where + [
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, torchaudio "
        f"{_version('torchaudio')}, speechbrain {_version('speechbrain')}",
    ]


def report(settings: Settings, command: str, budget_s: float, deadline: float) -> str:
    """Every section, measured while the deadline allows, under one header."""
    start = time.time()
    # Most wanted first: SepFormer's steps answer the goal, the train.py runs prove the AMP paths.
    step_results = measure_steps("sepformer", settings, deadline)
    train_runs = train_runs_section(settings, deadline)
    step_results.update(measure_steps("convtasnet", settings, deadline))
    sections = [
        steps_section(step_results, settings),
        train_runs,
        scoring_section(settings, deadline),
        separate_section(settings, deadline),
    ]
    quick = " **--quick: tiny sizes and few steps, a smoke test of the check, not figures.**" if settings.quick else ""
    header = [
        "# GPU check",
        "",
        f"Written by `bench/gpu_check.py` (run plan in its docstring); `make bench` leaves this file alone.{quick}",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        *machine_lines(settings.device),
        f"- Reproduce: `{command}`",
        f"- Budget: {budget_s:g} s, measuring took {time.time() - start:.0f} s",
        goal_summary(step_results),
        "",
    ]
    return "\n".join(header + sections)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--quick", action="store_true", help="tiny models, short signals, few steps: a smoke test")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="stop measuring after this many seconds; the report is still written (default %(default)s)",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="report path (default bench/RESULTS-gpu.md)"
    )
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, spec = args.worker
        WORKERS[kind](json.loads(spec))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU (torch.cuda.is_available() is False)")
    if args.quick and device == "cpu":  # a smoke test on a shared CPU: one thread per child process, no contention
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, "1")
    deadline = time.time() + args.budget_s
    command = shlex.join(["python", "bench/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
    text = report(Settings(device, args.quick), command, args.budget_s, deadline)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text.rstrip() + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
