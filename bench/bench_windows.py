"""Window, hop and precision of separate.py, chosen by measurement: quality of trained models on long recordings.

Long two-talker recordings are made from the embedded corpus's test talkers, whom no model trained on: each
recording pairs two talkers, each talker's test utterances in a loop with random pauses (0.1-0.6 s) for
`--seconds`, at equal level (random offsets of +-2.5 dB), summed. Each trained model separates them with
`FileSeparator.separate` (what separate.py runs) for every window, overlap and precision, and is scored by
SI-SNRi over the whole recording with one speaker order for all of it (a speaker swap between windows
costs what it costs a listener). Time per audio second is the separation alone, in this process.

    make demo                # results/demo (Conv-TasNet, 2 s crops) and data/MiniLibri2Mix
    python train.py hparams/sepformer.yaml --data_folder=data/MiniLibri2Mix --experiment_name=sepformer-small \
        --N_encoder_out=64 --out_channels=64 --num_layers=2 --nhead=4 --d_ffn=256 --batch_size=8 --lr=0.002 \
        --training_signal_len=16000 --train_budget_minutes=16 --precision=bf16 --num_workers=1 \
        --dynamic_mixing=True --base_folder_dm=data/MiniLibri2Mix/sources/train --dm_level_scheme=librimix \
        --dm_epoch_len=1200 --use_speedperturb=False --save_audio=False     # a SepFormer trained briefly
    python -m bench.run_all --only windows
"""

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.markdown import section

CORPUS = Path("data/MiniLibri2Mix")  # relative: the benchmarks run from the repository root
MODELS = (Path("results/demo"), Path("results/sepformer-small/1234"))
WINDOWS = (2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 128.0)  # seconds; 128 s holds a whole recording: one pass
OVERLAPS = (0.5, 1.0, 2.0)  # seconds shared by consecutive windows (window - hop)
REFERENCE = (8.0, 4.0, "fp32")  # what every row is compared with: window, hop, precision
NUM_RECORDINGS, SECONDS = 3, 120.0
QUICK = dict(windows=(4.0, 16.0), overlaps=(1.0,), num_recordings=1, seconds=20.0)


def talker_track(files: list[Path], seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One talker's utterances in a loop, with random pauses, cut to `seconds`: [time] float64, sample rate."""
    pieces, total, sample_rate = [], 0, None
    for path in itertools.cycle(files):
        audio, sample_rate = sf.read(path, dtype="float64")
        pause = np.zeros(int(rng.uniform(0.1, 0.6) * sample_rate))
        pieces += [audio, pause]
        total += audio.shape[0] + pause.shape[0]
        if total >= seconds * sample_rate:
            break
    return np.concatenate(pieces)[: int(seconds * sample_rate)], sample_rate


def long_recordings(corpus: Path, count: int, seconds: float, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (mixture [time], sources [time, 2]) pairs of consecutive test talkers of the corpus."""
    rng = np.random.default_rng(seed)
    talkers = sorted(path for path in (corpus / "sources" / "test").iterdir() if path.is_dir())
    if len(talkers) < 2 * count:
        raise SystemExit(f"{corpus}: {len(talkers)} test talkers, {2 * count} needed")
    recordings = []
    for first in range(0, 2 * count, 2):
        tracks = []
        for talker in talkers[first : first + 2]:
            track, _ = talker_track(sorted(talker.glob("*.wav")), seconds, rng)
            tracks.append(track / np.sqrt(np.mean(track**2)) * 0.05 * 10 ** (rng.uniform(-2.5, 2.5) / 20))
        sources = np.stack(tracks, axis=1)
        recordings.append((sources.sum(axis=1), sources))
    return recordings


def si_snr_improvement(est_sources, sources, mixture) -> float:
    """Mean SI-SNRi (dB) over the speakers, in the best speaker order for the whole recording."""
    import torch

    from speechsep.evaluation.metrics import pit_si_snr

    sources = torch.as_tensor(sources).unsqueeze(0)
    est, _ = pit_si_snr(torch.as_tensor(est_sources, dtype=torch.float64).unsqueeze(0), sources)
    mix = torch.as_tensor(mixture).unsqueeze(0).unsqueeze(-1).expand_as(sources)
    base, _ = pit_si_snr(mix, sources)
    return float((est - base).mean())


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """SNR (dB) of `estimate` [time, num_spks] against `reference`, in the speaker order that fits best."""
    errors = [
        float(((reference - estimate[:, list(order)]) ** 2).sum())
        for order in itertools.permutations(range(reference.shape[1]))
    ]
    return float("inf") if min(errors) == 0 else 10 * np.log10(float((reference**2).sum()) / min(errors))


def evaluate(model: Path, recordings, configs) -> list[dict]:
    """Each config's mean SI-SNRi, seconds per audio second and, for a config also run in fp32, the SNR of its
    output to the fp32 output (the worst recording's)."""
    import torch

    from speechsep.inference.files import FileSeparator, SeparationOptions
    from speechsep.inference.model_folder import load_separator

    separator = load_separator(model)
    outputs, rows = {}, []
    for window, hop, precision in configs:
        files = FileSeparator(separator, SeparationOptions(window=window, hop=hop, precision=precision, progress=False))
        scores, estimates, elapsed, audio = [], [], 0.0, 0.0
        for mixture, sources in recordings:
            start = time.perf_counter()
            est_sources = files.separate(torch.as_tensor(mixture, dtype=torch.float32)).double().numpy()
            elapsed += time.perf_counter() - start
            audio += mixture.shape[0] / files.sample_rate
            scores.append(si_snr_improvement(est_sources, sources, mixture))
            estimates.append(est_sources)
        outputs[window, hop, files.precision] = estimates
        rows.append(
            {
                "window": window,
                "hop": hop,
                "precision": files.precision,
                "si_snr_i": float(np.mean(scores)),
                "seconds_per_second": elapsed / audio,
            }
        )
        print(f"  {model.name} {rows[-1]}", file=sys.stderr, flush=True)
    for row in rows:
        fp32 = outputs.get((row["window"], row["hop"], "fp32"))
        if row["precision"] != "fp32" and fp32 is not None:
            ours = outputs[row["window"], row["hop"], row["precision"]]
            row["snr_to_fp32"] = min(snr_db(r, o) for r, o in zip(fp32, ours))
    return rows


def run(quick: bool = False, models=MODELS, corpus: Path = CORPUS) -> str:
    """The table: one row per (model, window, overlap, precision)."""
    import torch

    from speechsep.inference.files import SeparationOptions

    options = (
        QUICK if quick else dict(windows=WINDOWS, overlaps=OVERLAPS, num_recordings=NUM_RECORDINGS, seconds=SECONDS)
    )
    defaults = SeparationOptions()
    configs = [
        REFERENCE,
        *[
            (window, window - overlap, "auto")
            for window in options["windows"]
            for overlap in options["overlaps"]
            if overlap < window
        ],
        (8.0, 4.0, "auto"),
        (defaults.window, defaults.hop, defaults.precision),
        (defaults.window, defaults.hop, "fp32"),
    ]
    found = [Path(model) for model in models if Path(model).is_dir()]
    if not found or not corpus.is_dir():
        return section(
            "## Window, hop and precision of separate.py on trained models",
            f"Not run: needs the embedded corpus ({corpus}) and trained models ({', '.join(map(str, models))}); "
            "see bench/bench_windows.py.",
            "model | window (s) | hop (s) | precision | SI-SNRi (dB) | vs 8 s / 4 s fp32 (dB) | s per audio s | SNR to fp32 (dB)",
            [],
        )
    recordings = long_recordings(corpus, options["num_recordings"], options["seconds"])
    rows = []
    for model in found:
        results = evaluate(model, recordings, list(dict.fromkeys(configs)))
        reference = results[0]["si_snr_i"]
        for result in results:
            snr = f"{result['snr_to_fp32']:.1f}" if "snr_to_fp32" in result else ""
            rows.append(
                f"| {model} "
                f"| {result['window']:g} | {result['hop']:g} | {result['precision']} | {result['si_snr_i']:.2f} "
                f"| {result['si_snr_i'] - reference:+.3f} | {result['seconds_per_second']:.4f} "
                f"| {snr} |"
            )
    return section(
        "## Window, hop and precision of separate.py on trained models",
        f"{len(recordings)} recordings of {options['seconds']:g} s, each two test talkers of the embedded corpus "
        "(never trained on) talking at once throughout (bench/bench_windows.py says how they are made); "
        "SI-SNRi over each whole recording in one speaker order, mean over the recordings. First row of each model: "
        f"the reference (8 s windows, 4 s hop, fp32). Time: separation only, CPU ({torch.get_num_threads()} "
        "threads); auto = bf16 where the CPU computes it natively. SNR to fp32: of the output to the same windows' fp32 output, the worst recording's (in the config's own "
        f"speaker order). separate.py's defaults: {defaults.window:g} s windows, {defaults.hop:g} s hop, precision "
        f"{defaults.precision}." + (" (--quick: a smoke test)" if quick else ""),
        "model | window (s) | hop (s) | precision | SI-SNRi (dB) | vs 8 s / 4 s fp32 (dB) | s per audio s | SNR to fp32 (dB)",
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two windows, one 20 s recording: a smoke test")
    parser.add_argument("--model", action="append", type=Path, help=f"trained model folder (default {MODELS})")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="the embedded corpus (default %(default)s)")
    args = parser.parse_args()
    print(run(args.quick, args.model or MODELS, args.corpus))


if __name__ == "__main__":
    main()
