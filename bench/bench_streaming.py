"""Streaming separation (`separate.py --stream`): latency, compute per chunk, memory over an hour, quality gap.

- Latency and real-time factor: the causal configs at their sizes (random weights: speed does not depend on
  them), fed 10 ms chunks of a speech-like mixture in a fresh process per case (threads, precision), each chunk
  timed from hand-over to its separated samples at the mixture's level (`StreamingFileSeparator.separate_chunks`,
  what separate.py runs per chunk). Best of three passes over the input.
- Memory: `separate.py --stream` in a pipe, fed 60 minutes of raw PCM on stdin as fast as it separates them,
  its resident memory read from /proc as the minutes go by.
- Quality: the test scores of the causal demo and the non-causal demo trained with the same number of epochs
  on the same data, read from their run folders (see QUALITY_RUNS for the commands that train them).

    python -m bench.bench_streaming --quick     # short inputs: a smoke test
    python -m bench.bench_streaming             # about 10 minutes on two CPU cores
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.bench_inference import write_model
from bench.markdown import run_score_row, section

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 8000
CHUNK_MS = 10.0
MODELS = {  # name -> (config, overrides, seconds of input timed per pass)
    "demo-causal (N=256, L=64, B=64, H=128, X=7, R=2)": ("demo-causal.yaml", {}, 20.0),
    "convtasnet-causal, recipe size (N=256, L=16, B=256, H=512, X=6, R=4)": ("convtasnet-causal.yaml", {}, 5.0),
}
CASES = [(threads, precision) for threads in (1, 2) for precision in ("fp32", "bf16")]
MEMORY_MINUTES = (1, 5, 10, 20, 30, 45, 60)
MEMORY_CHUNK_MS = 100.0  # the hour goes through in minutes; the stream's state is the same at any chunk size
QUALITY_RUNS = {  # run folder -> what trains it (11 epochs each: the demo's budget-bound run reached 11)
    "causal (demo-causal.yaml)": (
        Path("results/streaming/demo-causal"),
        "python train.py hparams/demo-causal.yaml --data_folder=data/MiniLibri2Mix --train_budget_minutes=null "
        "--N_epochs=11 --output_folder=results/streaming/demo-causal",
    ),
    "non-causal (demo.yaml)": (
        Path("results/streaming/demo"),
        "python train.py hparams/demo.yaml --data_folder=data/MiniLibri2Mix --train_budget_minutes=null "
        "--N_epochs=11 --test_shifts=1 --test_mixture_consistency=False --output_folder=results/streaming/demo",
    ),
}


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    from tests.speech import speech_like_mixture

    mixture = speech_like_mixture(int(seconds * SAMPLE_RATE), 2, SAMPLE_RATE, np.random.default_rng(seed))[0]
    return (0.5 * mixture / np.abs(mixture).max()).astype(np.float32)


def timing_worker(model_dir: str, threads: int, precision: str, seconds: float) -> dict:
    """In a fresh process: seconds of compute per 10 ms chunk, three passes over `seconds` of input."""
    import torch

    from speechsep.inference.model_folder import load_separator
    from speechsep.inference.stream_files import StreamingFileSeparator, StreamOptions

    torch.set_num_threads(threads)
    streamer = StreamingFileSeparator(load_separator(model_dir), StreamOptions(CHUNK_MS, precision))
    chunks = list(torch.split(torch.from_numpy(speech_like(seconds)), streamer.chunk))
    passes = []
    for _ in range(3):
        times, outputs = [], streamer.separate_chunks(chunks)
        while True:
            start = time.perf_counter()
            if next(outputs, None) is None:
                break
            times.append(time.perf_counter() - start)
        passes.append(times[1:-1])  # the first chunk warms up; the last is the stream's end
    best = min(passes, key=sum)
    return {
        "latency_ms": streamer.latency_ms,
        "median_ms": 1000 * statistics.median(best),
        "p99_ms": 1000 * float(np.percentile(best, 99)),
        "rtf": sum(best) / (len(best) * CHUNK_MS / 1000),
    }


def _worker_report(command: list[str]) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return {"error": lines[-1][:200]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def timing_section(model_dirs: dict, quick: bool) -> str:
    rows = []
    for name, model_dir in model_dirs.items():
        seconds = 2.0 if quick else MODELS[name][2]
        for threads, precision in CASES:
            command = [sys.executable, "-m", "bench.bench_streaming", "--timing-worker", str(model_dir)]
            report = _worker_report([*command, str(threads), precision, str(seconds)])
            if "error" in report:
                rows.append(f"| {name} | {threads} | {precision} | failed: {report['error']} | | | |")
                continue
            rows.append(
                f"| {name} | {threads} | {precision} | {report['latency_ms']:g} | {report['median_ms']:.2f} "
                f"| {report['p99_ms']:.2f} | {report['rtf']:.3f} |"
            )
    return section(
        "## Streaming: latency and real-time factor (separate.py --stream)",
        f"Each causal config at its size with random weights, at {SAMPLE_RATE} Hz, fed {CHUNK_MS:g} ms chunks of "
        f"a speech-like mixture ({', '.join(f'{MODELS[name][2]:g}' for name in MODELS) if not quick else '2'} s, "
        "in the order of the models), in a fresh process per row (`torch.set_num_threads`). Algorithmic "
        "latency: one encoder window, the longest a sample waits for the frame that completes it; a chunk adds its "
        f"own length ({CHUNK_MS:g} ms) as it is handed over whole, and the compute time of its pass. Compute per "
        "chunk: from hand-over to separated samples at the mixture's level, best of three passes; RTF = compute / "
        "audio duration (< 1 keeps up with a live input).",
        "model | threads | precision | algorithmic latency (ms) | compute per chunk, median (ms) | p99 (ms) | RTF",
        rows,
    )


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_section(model_dir: Path, minutes: tuple[int, ...]) -> str:
    """`separate.py --stream` in a pipe fed `minutes[-1]` minutes; its RSS as each of `minutes` has gone in."""
    command = [sys.executable, "separate.py", "--model", str(model_dir), "--stream", "--raw-rate", str(SAMPLE_RATE)]
    command += ["--chunk-ms", f"{MEMORY_CHUNK_MS:g}", "--output-dir", "-", "-"]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    received = [0]

    def drain() -> None:
        while block := process.stdout.read(1 << 16):
            received[0] += len(block)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    minute = (speech_like(60.0) * 32767).astype("<i2").tobytes()  # one minute, fed again and again
    rss, started = {}, time.perf_counter()
    for fed in range(1, minutes[-1] + 1):
        process.stdin.write(minute)
        process.stdin.flush()
        if fed in minutes:
            rss[fed] = _rss_mib(process.pid)
    process.stdin.close()
    process.wait()
    reader.join()
    elapsed = time.perf_counter() - started
    whole = received[0] == minutes[-1] * 60 * SAMPLE_RATE * 2 * 2
    rows = [f"| {fed} | {mib:.0f} |" for fed, mib in rss.items()]
    return section(
        "### Memory over an hour-long stream",
        f"`{' '.join(command[1:])}` (demo-causal size, random weights) fed {minutes[-1]} minutes of raw PCM on stdin "
        f"as fast as it separates them ({elapsed:.0f} s in all; exit status {process.returncode}, "
        f"{'every' if whole else '**not every**'} separated sample on stdout); resident memory (VmRSS) once each "
        f"number of minutes had gone in. The stream's state has a fixed size: memory is flat. {MEMORY_CHUNK_MS:g} ms "
        "chunks, so that the hour goes through in minutes; the state is the same at any chunk size.",
        "minutes of input | RSS (MiB)",
        rows,
    )


def quality_section() -> str:
    rows = [run_score_row(name, folder) for name, (folder, _) in QUALITY_RUNS.items()]
    commands = "; ".join(f"`{command}`" for _, command in QUALITY_RUNS.values())
    return section(
        "### What causality costs: causal vs non-causal demo, same training",
        "The demo's network in its causal form and as it is, each trained 11 epochs of dynamic mixing (what the "
        "demo's budget-bound run reached) on the embedded corpus and scored single pass on its speaker-disjoint "
        f"test split, from the runs' `test_results_summary.json`: {commands}.",
        "model | SI-SNRi dB (95% CI) | SDRi dB | test mixtures",
        rows,
    )


TRACK_POOL = Path("data/MiniLibri2Mix/sources/test")  # the embedded corpus's test talkers (make demo)
TRACK_SEGMENT_S = 4.0


def _talker_track(folder: Path, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One talker's utterances one after another with pauses of 0-1 s, `seconds` long, at unit RMS."""
    import soundfile as sf

    files, pieces, total = sorted(folder.glob("*.wav")), [], 0
    while total < seconds * SAMPLE_RATE:
        audio = sf.read(files[int(rng.integers(len(files)))], dtype="float32")[0]
        pieces += [audio / (np.sqrt(np.mean(audio**2)) + 1e-8), np.zeros(int(rng.uniform(0, 1) * SAMPLE_RATE))]
        total += sum(piece.shape[0] for piece in pieces[-2:])
    return np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)].astype(np.float32)


def tracks_section(pairs: int, seconds: float) -> str:
    """Whether a stream keeps each talker on one output: long mixtures of two test talkers, streamed through the
    trained causal demo, scored with one speaker order for the whole stream and with the best order per segment."""
    import torch

    from speechsep.inference.model_folder import load_separator
    from speechsep.inference.stream_files import StreamingFileSeparator, StreamOptions
    from speechsep.training.losses import best_permutation, pairwise_si_snr

    folder = QUALITY_RUNS["causal (demo-causal.yaml)"][0]
    title = "### Speakers on their tracks over a long stream"
    if not (folder / "save").is_dir() or not TRACK_POOL.is_dir():
        return f"{title}\n\nNot measured: needs {folder} (trained as above) and {TRACK_POOL} (`make demo`).\n"
    torch.set_num_threads(1)
    streamer = StreamingFileSeparator(load_separator(folder), StreamOptions(CHUNK_MS, "fp32"))
    talkers = sorted(path for path in TRACK_POOL.iterdir() if path.is_dir())
    rng = np.random.default_rng(0)
    segment = int(TRACK_SEGMENT_S * SAMPLE_RATE)
    rows = []
    for _ in range(pairs):
        first, second = rng.choice(len(talkers), 2, replace=False)
        sources = np.stack([_talker_track(talkers[k], seconds, rng) for k in (first, second)], axis=1)
        sources = torch.from_numpy(0.1 * sources)
        mixture = sources.sum(dim=1)
        est_sources = torch.cat(list(streamer.separate_chunks(torch.split(mixture, streamer.chunk))))
        whole = pairwise_si_snr(est_sources[None], sources[None])
        _, order = best_permutation(whole)
        cut = (mixture.shape[0] // segment) * segment
        pieces = lambda signal: signal[:cut].reshape(-1, segment, signal.shape[-1])  # noqa: E731
        per_segment = pairwise_si_snr(pieces(est_sources), pieces(sources))
        segment_best, segment_orders = best_permutation(per_segment)
        kept = per_segment[:, order[0], torch.arange(2)].mean(dim=-1)
        swapped = int((segment_orders != order).any(dim=-1).sum())
        rows.append(
            f"| {talkers[first].name} + {talkers[second].name} | {seconds:g} | {swapped} of {len(segment_orders)} "
            f"| {float(kept.mean()):.2f} | {float(segment_best.mean()):.2f} |"
        )
    return section(
        title,
        f"Two test talkers of the embedded corpus each speaking for {seconds:g} s (their utterances one after "
        "another with pauses of up to 1 s, equal levels), mixed and streamed in 10 ms chunks through the trained "
        f"causal demo ({folder}). Cut into {TRACK_SEGMENT_S:g} s segments: in how many the best speaker order "
        "differs from the whole stream's, and the mean segment SI-SNR (dB, of the estimates, not an improvement) "
        "with the whole stream's order kept against the best order chosen per segment: equal when no talker "
        "changes track.",
        "talkers | seconds | segments with another order | SI-SNR, one order | SI-SNR, best per segment",
        rows,
    )


def run(quick: bool = False) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = {
            name: write_model(Path(tmp) / f"model{number}", overrides, config=config)
            for number, (name, (config, overrides, _)) in enumerate(MODELS.items())
        }
        parts = [timing_section(model_dirs, quick)]
        parts.append(memory_section(next(iter(model_dirs.values())), (1, 2) if quick else MEMORY_MINUTES))
    parts.append(quality_section())
    parts.append(tracks_section(1 if quick else 5, 20.0 if quick else 60.0))
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short inputs: a smoke test")
    worker_args = ("MODEL", "THREADS", "PRECISION", "SECONDS")
    parser.add_argument("--timing-worker", nargs=len(worker_args), metavar=worker_args, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timing_worker:
        model_dir, threads, precision, seconds = args.timing_worker
        print(json.dumps(timing_worker(model_dir, int(threads), precision, float(seconds))))
        return
    print(run(quick=args.quick))


if __name__ == "__main__":
    main()
