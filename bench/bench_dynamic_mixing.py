"""Dynamic-mixing throughput: how many training mixtures one loader worker builds per second."""

import argparse
import os
import tempfile
import time
from itertools import product
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from bench.markdown import section
from speechsep.data.dynamic_mixing import DynamicMixingDataset
from speechsep.data.source_pool import AudioIndex, SourcePool

SAMPLE_RATE = 8000
SEGMENT_LEN = 4 * SAMPLE_RATE
NUM_SPKS = 2
SPEED_PERTURB = [95, 100, 105]


def _write_noise_bursts(path: Path, seconds: float, seed: int) -> None:
    """Speech-like enough for timing: white noise gated on and off at a syllable rate."""
    rng = np.random.default_rng(seed)
    num_frames = int(seconds * SAMPLE_RATE)
    envelope = np.repeat(rng.uniform(0.0, 1.0, num_frames // 800 + 1) > 0.3, 800)[:num_frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * rng.standard_normal(num_frames) * envelope).astype(np.float32), SAMPLE_RATE)


def _write_pools(folder: Path, num_speakers: int, num_utterances: int) -> tuple[SourcePool, AudioIndex]:
    """A pool of 6 s utterances in speaker folders, and three 20 s noise files."""
    for speaker, utterance in product(range(num_speakers), range(num_utterances)):
        path = folder / "sources" / f"spk{speaker}" / f"utt{utterance}.wav"
        _write_noise_bursts(path, 6.0, seed=10 * speaker + utterance)
    for number in range(3):
        _write_noise_bursts(folder / "noise" / f"noise{number}.wav", 20.0, seed=1000 + number)
    pool = SourcePool.from_folder(folder / "sources", SAMPLE_RATE)
    return pool, AudioIndex.from_folder(folder / "noise", SAMPLE_RATE)


def _seconds_per_mixture(dataset: DynamicMixingDataset, num_mixtures: int) -> float:
    dataset[num_mixtures]  # warm-up: page cache, first calls
    start = time.perf_counter()
    for index in range(num_mixtures):
        dataset[index]
    return (time.perf_counter() - start) / num_mixtures


def data_wait_share(pool_folder: Path, steps: int) -> tuple[float, float, int]:
    """Train the demo config with dynamic mixing for `steps` steps; return (mean step s, wait share, workers).

    The wait is the time `next(loader)` blocks, i.e. how long the model waits for the loader workers.
    """
    import speechbrain as sb
    from speechbrain.dataio.batch import PaddedBatch

    from speechsep.training.config import load_hparams
    from train import Separation, training_dataset

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as output:
        hparams = load_hparams(
            root / "hparams" / "demo.yaml",
            {
                "data_folder": "unused",
                "output_folder": output,
                "dynamic_mixing": True,
                "base_folder_dm": str(pool_folder),
                "dm_epoch_len": 64 * (steps + 5),
            },
        )
        brain = Separation(
            modules=hparams["modules"],
            opt_class=hparams["optimizer"],
            hparams=hparams,
            run_opts={"device": "cpu", "noprogressbar": True},
        )
        train_set = training_dataset(hparams)
        loader = brain.make_dataloader(
            train_set, sb.Stage.TRAIN, **hparams["dataloader_opts"], collate_fn=PaddedBatch, ckpt_prefix=None
        )
        brain.init_optimizers()
        brain.on_stage_start(sb.Stage.TRAIN, 1)
        batches = iter(loader)
        waits, totals = [], []
        for step in range(steps + 5):
            start = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - start
            brain.step = step + 1
            brain.fit_batch(batch)
            if step >= 5:  # after the workers' start-up
                waits.append(waited)
                totals.append(time.perf_counter() - start)
        return sum(totals) / len(totals), sum(waits) / sum(totals), hparams["num_workers"]


def run(quick: bool = False) -> str:
    """Time `DynamicMixingDataset.__getitem__` for each level scheme, with and without noise and speed."""
    torch.set_num_threads(1)  # what one DataLoader worker gets
    num_speakers, num_utterances, num_mixtures = (4, 2, 5) if quick else (20, 5, 200)
    speeds = "/".join(map(str, SPEED_PERTURB))
    caveat = " (--quick: too few mixtures for stable figures)" if quick else ""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pool, noise_files = _write_pools(Path(tmp), num_speakers, num_utterances)
        settings = product(("wsj0", "librimix"), (False, True), (False, True))
        for level_scheme, with_noise, with_speed in settings:
            dataset = DynamicMixingDataset(
                pool,
                num_spks=NUM_SPKS,
                sample_rate=SAMPLE_RATE,
                segment_len=SEGMENT_LEN,
                epoch_len=num_mixtures + 1,
                level_scheme=level_scheme,
                noise_files=noise_files if with_noise else None,
                speed_perturb=SPEED_PERTURB if with_speed else None,
            )
            seconds = _seconds_per_mixture(dataset, num_mixtures)
            rows.append(
                f"| {level_scheme} | {'yes' if with_noise else 'no'} | {speeds if with_speed else 'no'} "
                f"| {1 / seconds:.0f} | {1000 * seconds:.2f} |"
            )
        torch.set_num_threads(os.cpu_count())  # training itself uses every core
        step_seconds, wait_share, workers = data_wait_share(Path(tmp) / "sources", steps=5 if quick else 60)
    return "\n".join(
        [
            section(
                "## Dynamic mixing throughput",
                f"Mixtures per second built by `DynamicMixingDataset` in one process with one torch thread "
                f"(one loader worker): {NUM_SPKS} speakers, {SEGMENT_LEN // SAMPLE_RATE} s at {SAMPLE_RATE} Hz, "
                f"mean of {num_mixtures} mixtures; 6 s source files in the page cache, so this is decoding, "
                f"levels and mixing, not disk{caveat}.",
                "level scheme | noise | speed perturbation (%) | mixtures/s | ms/mixture",
                rows,
                right_aligned=2,
            ),
            "### Waiting for data in the demo config",
            "",
            f"`hparams/demo.yaml` trained with dynamic mixing (its batch size, crop length and `num_workers`="
            f"{workers}) on this pool: mean step {1000 * step_seconds:.0f} ms, of which "
            f"**{100 * wait_share:.1f}%** waiting for the next batch (`next(loader)`), after 5 warm-up steps.",
            "",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few mixtures only: a smoke test")
    print(run(quick=parser.parse_args().quick))
