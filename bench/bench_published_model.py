"""Published SpeechBrain model folders, full size: `separate.py` against SpeechBrain's own `separate_file`.

Each folder is written exactly as SpeechBrain publishes its separators (capitalised module keys, a `modules:`
map, a pretrainer with loadables; `speechbrain/sepformer-wsj02mix`'s hyperparameters for the SepFormer),
with random weights: speed and memory do not depend on them. Both tools run as a user runs them, one fresh
process per run (load, separate, write one file per speaker), on the same folder and file, interleaved
(SpeechBrain, separate.py, SpeechBrain, ...), and the best of the rounds is kept: this machine's speed drifts.
Peak memory is each process's peak RSS (`wait4`'s ru_maxrss).

    python -m bench.bench_published_model              # 30 s: SepFormer and Conv-TasNet; 5 min: SepFormer
    python -m bench.bench_published_model --quick      # 10 s, one round: a smoke test
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_inference import SAMPLE_RATE, write_recording
from bench.markdown import section
from tests.published_models import PRETRAINER  # the modules map and pretrainer of that layout

TRANSFORMER_BLOCK = """!new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: 8
    d_model: 256
    nhead: 8
    d_ffn: 1024
    dropout: 0
    use_positional_encoding: true
    norm_before: true"""
# SpeechBrain's published speechbrain/sepformer-wsj02mix hyperparams.yaml, as that folder declares its model.
ENCODER = """\
sample_rate: 8000
num_spks: 2

Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: 16
    out_channels: 256
"""
DECODER = """\
Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: 256
    out_channels: 1
    kernel_size: 16
    stride: 8
    bias: false
"""
PUBLISHED_SEPFORMER = f"""\
{ENCODER}
SBtfintra: {TRANSFORMER_BLOCK}

SBtfinter: {TRANSFORMER_BLOCK}

MaskNet: !new:speechbrain.lobes.models.dual_path.Dual_Path_Model
    num_spks: !ref <num_spks>
    in_channels: 256
    out_channels: 256
    num_layers: 2
    K: 250
    intra_model: !ref <SBtfintra>
    inter_model: !ref <SBtfinter>
    norm: ln
    linear_layer_after_inter_intra: false
    skip_around_intra: true

{DECODER}{PRETRAINER}"""
# SpeechBrain's WSJ0-2mix Conv-TasNet recipe (hparams/convtasnet.yaml) in the same published layout.
PUBLISHED_CONVTASNET = f"""\
{ENCODER}
MaskNet: !new:speechbrain.lobes.models.conv_tasnet.MaskNet
    N: 256
    B: 256
    H: 512
    P: 3
    X: 8
    R: 4
    C: !ref <num_spks>
    norm_type: gLN
    causal: false
    mask_nonlinear: relu

{DECODER}{PRETRAINER}"""
SEPFORMER = "SepFormer (N=256, 2 x 8 + 8 layers, d_ffn 1024; sepformer-wsj02mix)"
CONVTASNET = "Conv-TasNet (N=256, B=256, H=512, X=8, R=4; SpeechBrain's WSJ0-2mix recipe)"
MODELS = {SEPFORMER: PUBLISHED_SEPFORMER, CONVTASNET: PUBLISHED_CONVTASNET}
CASES = ((SEPFORMER, 30.0, 2), (CONVTASNET, 30.0, 2), (SEPFORMER, 300.0, 1))  # (model, input seconds, rounds)
QUICK_CASES = ((SEPFORMER, 10.0, 1), (CONVTASNET, 10.0, 1))

# What a SpeechBrain user runs: the model class SpeechBrain's model cards name, then one file per speaker.
SPEECHBRAIN_SCRIPT = """\
import sys
import soundfile
from speechbrain.inference.separation import SepformerSeparation
folder, path, out = sys.argv[1:]
model = SepformerSeparation.from_hparams(source=folder, savedir=folder)
est_sources = model.separate_file(path=path)
for k in range(est_sources.shape[-1]):
    soundfile.write(f"{out}/s{k + 1}.wav", est_sources[0, :, k].numpy(), int(model.hparams.sample_rate))
"""


def write_published_folder(folder: Path, config: str, seed: int = 0) -> Path:
    """A folder in SpeechBrain's published layout: `config`, and random weights under its loadable names."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    torch.manual_seed(seed)
    hparams = load_hyperpyyaml(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.yaml").write_text(config)
    for key, module in hparams["pretrainer"].loadables.items():
        torch.save(module.state_dict(), folder / f"{key}.ckpt")
    return folder


def commands(model_dir: Path, recording: Path, out: Path) -> dict[str, list[str]]:
    """The two whole-process runs compared, by tool name."""
    return {
        "SpeechBrain separate_file": [
            sys.executable,
            "-c",
            SPEECHBRAIN_SCRIPT,
            str(model_dir),
            str(recording),
            str(out),
        ],
        "separate.py": [
            sys.executable,
            "separate.py",  # relative: the benchmarks run from the repository root
            "--model",
            str(model_dir),
            "--output-dir",
            str(out),
            "--overwrite",
            "--quiet",
            str(recording),
        ],
    }


def timed_run(command: list[str]) -> dict:
    """Wall-clock seconds and peak RSS (MiB) of one process, or {"error": its last stderr line}."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            lines = stderr.read().decode(errors="replace").strip().splitlines() or [f"exit {process.returncode}"]
            return {"error": lines[-1][:200]}
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 2**10}  # KiB on Linux


def compare(model_dir: Path, recording: Path, out: Path, rounds: int) -> dict[str, dict]:
    """Each tool's best run of `rounds`, interleaved, with every run's time."""
    runs = {name: [] for name in commands(model_dir, recording, out)}
    for _ in range(rounds):
        for name, command in commands(model_dir, recording, out).items():
            out.mkdir(parents=True, exist_ok=True)
            print(f"  {name} on {recording.name} ...", file=sys.stderr, flush=True)
            runs[name].append(timed_run(command))
    best = {}
    for name, results in runs.items():
        done = [result for result in results if "error" not in result]
        best[name] = min(done, key=lambda result: result["seconds"]) if done else results[-1]
        best[name]["all"] = [result.get("seconds") for result in results]
    return best


def run(quick: bool = False) -> str:
    """The side-by-side table: one row per (model, input length)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = {
            name: write_published_folder(tmp / f"model{k}", config) for k, (name, config) in enumerate(MODELS.items())
        }
        for model, seconds, rounds in QUICK_CASES if quick else CASES:
            recording = write_recording(tmp / f"input_{seconds:g}s.wav", seconds)
            best = compare(folders[model], recording, tmp / "out", rounds)
            theirs, ours = best["SpeechBrain separate_file"], best["separate.py"]
            cells = []
            for result in (theirs, ours):
                if "error" in result:
                    cells += [f"failed: {result['error']}", "", ""]
                else:
                    times = ", ".join(f"{value:.0f}" for value in result["all"] if value is not None)
                    cells += [f"{result['seconds'] / seconds:.2f}", times, f"{result['peak_mib']:.0f}"]
            speedup = theirs["seconds"] / ours["seconds"] if "error" not in theirs and "error" not in ours else None
            rows.append(
                f"| {model} | {seconds / 60:.3g} | {' | '.join(cells)} | "
                f"{f'**{speedup:.2f}x**' if speedup else 'n/a'} |"
            )
    cpu = f"CPU ({len(os.sched_getaffinity(0))} threads)"
    return section(
        "## Published SpeechBrain models: separate.py vs SpeechBrain's separate_file",
        f"Folders in the layout SpeechBrain publishes, full size, random weights; one {SAMPLE_RATE} Hz two-speaker "
        f"recording (speech-like synthetic) per row, on {cpu}. Whole process each, as a user runs it (Python start, "
        "imports, loading, separating, writing one WAV per speaker): `SepformerSeparation.from_hparams(...)."
        "separate_file(...)` then `soundfile.write` per speaker, against `python separate.py --model FOLDER "
        "--output-dir OUT FILE` with its defaults. Runs interleaved; RTF and peak RSS from each tool's best run, "
        "all runs' seconds listed. Speed-up = SpeechBrain's best time / separate.py's best time."
        + (" (--quick: short inputs, one round: a smoke test)." if quick else ""),
        "model | input (min) | SpeechBrain RTF | runs (s) | peak RSS (MiB) | separate.py RTF | runs (s) | "
        "peak RSS (MiB) | separate.py faster",
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s inputs, one round: a smoke test")
    args = parser.parse_args()
    print(run(quick=args.quick))


if __name__ == "__main__":
    main()
