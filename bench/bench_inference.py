"""Separating long recordings: real-time factor and peak memory of `separate.py` for 1, 10 and 60 minutes.

Each case (model, input length) runs in a fresh process that loads the model and separates one file the
way `separate.py` does (read, resample if needed, windows with overlap-add, write one file per speaker).
Peak memory is that process's peak RSS (`getrusage(RUSAGE_SELF).ru_maxrss` read as it ends, the figure
that `getrusage(RUSAGE_CHILDREN)` gives its parent), so it includes Python, torch and the model. Chunked
separation keeps it flat in the input's length apart from the input and output buffers (4 bytes per
sample per track). Models have random weights: speed and memory do not depend on them.

    python -m bench.bench_inference --quick     # 10 s and 30 s inputs: a smoke test
    python -m bench.bench_inference             # 1, 10 and 60 min inputs (long on a CPU; --device cuda)
"""

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.markdown import section

REPO_ROOT = Path(__file__).resolve().parents[1]

SAMPLE_RATE = 8000
NUM_SPKS = 2
RSS_LIMIT_MIB = 2048  # what a 60 min input must stay under
DEMO = "ConvTasNet, demo size (N=64, B=64, H=128, X=6, R=2)"
RECIPE = "ConvTasNet, recipe size (N=256, B=256, H=512, X=6, R=4)"
MODELS = {DEMO: {"N_encoder_out": 64, "B": 64, "H": 128, "X": 6, "R": 2}, RECIPE: {}}  # overrides of convtasnet.yaml
CASES = [(model, minutes * 60.0) for model in MODELS for minutes in (1, 10, 60)]  # (model, input seconds)
QUICK_CASES = [(DEMO, 10.0), (DEMO, 30.0), (RECIPE, 10.0)]


def write_model(folder: Path, overrides: dict, seed: int = 0, config: str = "convtasnet.yaml") -> Path:
    """An exported-model folder (config + random weights) of hparams/<config> with `overrides`."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    from speechsep.inference.model_folder import MODULE_NAMES, inference_config
    from speechsep.training.config import resolved_yaml

    values = {"data_folder": str(folder), "output_folder": str(folder), "num_spks": NUM_SPKS, **overrides}
    text = resolved_yaml(REPO_ROOT / "hparams" / config, "\n".join(f"{k}: {v}" for k, v in values.items()))
    config = inference_config(text)
    torch.manual_seed(seed)
    modules = load_hyperpyyaml(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.yaml").write_text(config)
    for name in MODULE_NAMES:
        torch.save(modules[name].state_dict(), folder / f"{name}.ckpt")
    return folder


def write_recording(path: Path, seconds: float, piece_seconds: float = 30.0, seed: int = 0) -> Path:
    """A long two-speaker recording: synthetic speech-like mixtures written one after another, in blocks."""
    from tests.speech import speech_like_mixture

    rng = np.random.default_rng(seed)
    pieces = [speech_like_mixture(int(piece_seconds * SAMPLE_RATE), NUM_SPKS, SAMPLE_RATE, rng)[0] for _ in range(3)]
    pieces = [(0.5 * piece / np.abs(piece).max()).astype(np.float32) for piece in pieces]
    remaining = int(seconds * SAMPLE_RATE)
    with sf.SoundFile(path, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16") as audio:
        for piece in itertools.cycle(pieces):
            if remaining <= 0:
                break
            audio.write(piece[:remaining])
            remaining -= min(remaining, piece.shape[0])
    return path


def windowing() -> str:
    """separate.py's default window, hop and precision, in words."""
    from speechsep.inference.files import SeparationOptions

    defaults = SeparationOptions()
    return f"{defaults.window:g} s windows, {defaults.hop:g} s hop, precision {defaults.precision}"


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(model_dir: str, input_path: str, output_dir: str, batch_size: int, device: str) -> dict:
    """One case, in this (fresh) process: load the model, separate the file, report time and memory."""
    from speechsep.inference.files import FileSeparator, SeparationOptions
    from speechsep.inference.model_folder import load_separator

    options = SeparationOptions(batch_size=batch_size, progress=False)  # separate.py's defaults
    separator = FileSeparator(load_separator(model_dir, device=device), options)
    rss_before_mib = _current_rss_mib()
    start = time.perf_counter()
    result = separator.separate_file(input_path, output_dir)
    elapsed = time.perf_counter() - start
    return {
        "audio_seconds": result.seconds,
        "elapsed": elapsed,
        "rss_before_mib": rss_before_mib,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,  # KiB on Linux
    }


def measure(model_dir: Path, input_path: Path, output_dir: Path, batch_size: int, device: str) -> dict:
    """Runs `worker` in a fresh Python process; returns its report or {"error": ...}."""
    command = [
        sys.executable,
        "-m",
        "bench.bench_inference",
        "--worker",
        str(model_dir),
        str(input_path),
        str(output_dir),
        str(batch_size),
        device,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return {"error": lines[-1][:200]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(quick: bool = False, batch_size: int = 1, device: str | None = None) -> str:
    """Measures every (model, input length) case, each in a fresh process, and returns a markdown section."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cases = QUICK_CASES if quick else CASES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        durations = sorted({seconds for _, seconds in cases})
        inputs = {seconds: write_recording(tmp / f"input_{seconds:g}s.wav", seconds) for seconds in durations}
        model_dirs = {name: write_model(tmp / f"model{number}", MODELS[name]) for number, name in enumerate(MODELS)}
        for index, (name, seconds) in enumerate(cases):  # a folder per case: separate.py never overwrites
            report = measure(model_dirs[name], inputs[seconds], tmp / f"out{index}", batch_size, device)
            if "error" in report:
                rows.append(f"| {name} | {seconds / 60:.3g} | failed: {report['error']} | | | | |")
                continue
            peak = report["peak_rss_mib"]
            within = "yes" if peak < RSS_LIMIT_MIB else "**no**"
            rows.append(
                f"| {name} | {seconds / 60:.3g} | {report['elapsed'] / report['audio_seconds']:.3f} "
                f"| {report['elapsed']:.1f} | {report['rss_before_mib']:.0f} | {peak:.0f} | {within} |"
            )
    where = f"CPU ({len(os.sched_getaffinity(0))} threads)" if device == "cpu" else f"`{device}`"
    caveat = " (--quick: short inputs, a smoke test)" if quick else ""
    return section(
        "## Separating long recordings (separate.py)",
        f"One {SAMPLE_RATE} Hz two-speaker recording per row (synthetic speech-like mixtures), separated on {where} "
        f"with separate.py's defaults ({windowing()}), {batch_size} window(s) per forward pass, "
        "random weights. RTF = separation time / audio duration (reading, resampling and writing included, "
        "model loading not). Peak RSS of the fresh process that loaded the model and separated the file; "
        "*before* = RSS once the model is loaded. Chunking keeps peak minus before at the input and output "
        f"buffers (about 12 bytes per input sample with two speakers) plus one window's activations{caveat}.",
        f"model | input (min) | RTF | time (s) | RSS before (MiB) | peak RSS (MiB) | < {RSS_LIMIT_MIB} MiB",
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s and 30 s inputs: a smoke test")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    worker_args = ("MODEL", "INPUT", "OUT", "BATCH", "DEVICE")
    parser.add_argument("--worker", nargs=len(worker_args), metavar=worker_args, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model_dir, input_path, output_dir, batch_size, device = args.worker
        print(json.dumps(worker(model_dir, input_path, output_dir, int(batch_size), device)))
        return
    print(run(quick=args.quick, batch_size=args.batch_size, device=args.device))


if __name__ == "__main__":
    main()
