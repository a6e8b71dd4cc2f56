"""Reading mixtures and their sources from the CSV manifests written by `prepare_data.py`."""

import csv
from pathlib import Path

import soundfile as sf
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import GeneratorDynamicItem

from speechsep.errors import RecipeError


def signal_names(num_spks: int, with_noise: bool) -> list[str]:
    """Names of the signals of one example, as in the manifests without the `_wav` suffix: mix, s1, s2, ..."""
    return ["mix"] + [f"s{k}" for k in range(1, num_spks + 1)] + (["noise"] if with_noise else [])


class SegmentReader:
    """Reads one example's signals, the same segment of each file.

    With `segment_len` (samples) and `random_crop`, each example gets its own random offset and only those
    frames are read from disk (a WSJ0-2mix training file is ~6 s, a training crop often 4 s or less). A class
    rather than a closure so that datasets pickle under the spawn start method.
    """

    def __init__(self, segment_len: int | None = None, random_crop: bool = False):
        self.segment_len = segment_len
        self.random_crop = random_crop

    def __call__(self, *paths: str):
        """Yield a tuple of float32 tensors [time], one per path (a generator: SpeechBrain's GeneratorDynamicItem)."""
        signals = []
        start = 0
        for path in paths:
            with sf.SoundFile(path) as audio:
                frames = audio.frames
                if not signals and self.segment_len and self.random_crop and frames > self.segment_len:
                    start = int(torch.randint(0, frames - self.segment_len + 1, (1,)))
                audio.seek(min(start, frames))
                wanted = self.segment_len if self.segment_len else frames
                signal = audio.read(wanted, dtype="float32", always_2d=True)
            if signal.shape[1] != 1:
                raise ValueError(f"{path} has {signal.shape[1]} channels, expected mono")
            signals.append(torch.from_numpy(signal[:, 0]))
        yield tuple(signals)


def _check_manifest(csv_path: Path, columns: list[str]) -> None:
    """Fail with one line if a manifest is missing, lacks a needed column, or lists no example."""
    if not csv_path.is_file():
        raise RecipeError(f"manifest not found: {csv_path}")
    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        has_rows = next(reader, None) is not None
    missing = [column for column in columns if column not in header]
    if missing:
        raise RecipeError(f"{csv_path} lacks column(s) {missing}; it has {header}")
    if not has_rows:
        raise RecipeError(f"{csv_path} lists no examples")


def separation_dataset(
    csv_path: str,
    data_root: str,
    num_spks: int,
    with_noise: bool = False,
    segment_len: int | None = None,
    random_crop: bool = False,
) -> DynamicItemDataset:
    """A DynamicItemDataset over a manifest, providing `id`, `mix_sig`, `s1_sig`, ... (and `noise_sig`)."""
    names = signal_names(num_spks, with_noise)
    _check_manifest(Path(csv_path), ["ID"] + [f"{name}_wav" for name in names])
    dataset = DynamicItemDataset.from_csv(csv_path=csv_path, replacements={"data_root": data_root})
    dataset.add_dynamic_item(
        GeneratorDynamicItem(
            takes=[f"{name}_wav" for name in names],
            func=SegmentReader(segment_len, random_crop),
            provides=[[f"{name}_sig" for name in names]],
        )
    )
    dataset.set_output_keys(["id"] + [f"{name}_sig" for name in names])
    return dataset


def write_audio(path, signal: torch.Tensor, sample_rate: int) -> None:
    """Write a mono float signal [time] as 16-bit PCM, clipped to [-1, 1] and with NaN written as 0."""
    signal = torch.nan_to_num(signal.detach().float().cpu(), nan=0.0).clamp(-1.0, 1.0)
    sf.write(str(path), signal.numpy(), sample_rate, subtype="PCM_16")
