"""Dynamic-mixing throughput: how many training mixtures one loader worker builds per second."""

import argparse
import sys
import tempfile
import time
from itertools import product
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speechsep.dynamic_mixing import AudioIndex, DynamicMixingDataset, SourcePool  # noqa: E402

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
    return "\n".join(
        [
            "## Dynamic mixing throughput",
            "",
            f"Mixtures per second built by `DynamicMixingDataset` in one process with one torch thread "
            f"(one loader worker): {NUM_SPKS} speakers, {SEGMENT_LEN // SAMPLE_RATE} s at {SAMPLE_RATE} Hz, "
            f"mean of {num_mixtures} mixtures; 6 s source files in the page cache, so this is decoding, "
            f"levels and mixing, not disk{caveat}.",
            "",
            "| level scheme | noise | speed perturbation (%) | mixtures/s | ms/mixture |",
            "|---|---|---|---:|---:|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few mixtures only: a smoke test")
    print(run(quick=parser.parse_args().quick))
