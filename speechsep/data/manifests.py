"""Reading mixtures and their sources from the CSV manifests written by `prepare_data.py`."""

import csv
from collections.abc import Sequence
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import GeneratorDynamicItem

from speechsep.data.audio_checks import (
    AudioCheckError,
    AudioRequirements,
    check_example,
    name_problem,
    read_header,
    read_segment,
)
from speechsep.errors import RecipeError
from speechsep.output_files import write_csv

logger = logging.getLogger(__name__)

DATA_ROOT = "$data_root"  # how manifests start the paths of files in the data folder
SKIPPED_FILE = "skipped_files.csv"  # beside the manifests: what `skip_bad_files` left out of them
SKIPPED_COLUMNS = ["split", "mixture", "reason"]


class ManifestError(RecipeError):
    """A manifest that cannot be used as it is; the message names the CSV and, where it is one row, its line."""


def signal_names(num_spks: int, with_noise: bool) -> list[str]:
    """Names of the signals of one example, as in the manifests without the `_wav` suffix: mix, s1, s2, ..."""
    return ["mix"] + [f"s{k}" for k in range(1, num_spks + 1)] + (["noise"] if with_noise else [])


def optional_columns(num_spks: int, min_talkers: int | None) -> list[str]:
    """The source columns a manifest may leave out or empty: those beyond `min_talkers` (None: none may be)."""
    first = num_spks if min_talkers is None else min_talkers
    return [f"s{k}_wav" for k in range(first + 1, num_spks + 1)]


class SegmentReader:
    """Reads one example's signals, the same segment of each file.

    With `segment_len` (samples) and `random_crop`, each example gets its own random offset and only those
    frames are read from disk (a WSJ0-2mix training file is ~6 s, a training crop often 4 s or less). The offset
    is a pure function of (seed, epoch, example ID), as dynamic mixing's mixtures are, so that it depends neither
    on which loader worker reads the example nor on the batches a resumed epoch skips. A class rather than a
    closure so that datasets pickle under the spawn start method.
    """

    def __init__(self, segment_len: int | None = None, random_crop: bool = False, seed: int = 0):
        self.segment_len = segment_len
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0

    def crop_start(self, example_id: str, frames: int) -> int:
        """The first frame of the crop of `example_id`, a file of `frames` frames, in the current epoch."""
        if frames <= self.segment_len:
            return 0
        id_number = int.from_bytes(hashlib.sha256(example_id.encode("utf-8")).digest()[:8], "little")
        rng = np.random.default_rng([self.seed, self.epoch, id_number])
        return int(rng.integers(0, frames - self.segment_len + 1))

    def __call__(self, example_id: str, *paths: str):
        """Yield a tuple of float32 tensors [time], one per path (a generator: SpeechBrain's GeneratorDynamicItem)."""
        start = 0
        if self.segment_len and self.random_crop:
            frames = read_header(paths[0]).frames  # measured where the header gives no length
            start = self.crop_start(example_id, frames)
        signals = []
        for path in paths:
            if not path:  # a source column left empty: no talker, silent over the mixture (read first)
                signals.append(torch.zeros_like(signals[0]))
                continue
            signal = read_segment(path, start, self.segment_len)
            if signal.shape[1] != 1:
                raise ValueError(f"{path} has {signal.shape[1]} channels, expected mono")
            signals.append(torch.from_numpy(signal[:, 0]))
        yield tuple(signals)


class SeparationDataset(DynamicItemDataset):
    """A manifest's examples; `set_epoch` selects the epoch whose random crops they get.

    Call `set_epoch` before each epoch's loader iterator is created (Brain.on_stage_start), so that new workers
    see it.
    """

    def __init__(self, rows_by_id: dict[str, dict], segment_reader: SegmentReader):
        super().__init__(rows_by_id)
        self.segment_reader = segment_reader

    def set_epoch(self, epoch: int) -> None:
        self.segment_reader.epoch = int(epoch)


def read_manifest(csv_path: Path, data_root: str, columns: list[str]) -> dict[str, dict]:
    """The rows of a manifest by ID, with a leading `$data_root` replaced, after checking that it lists examples,
    has `columns`, unique IDs and files that exist: one line naming the CSV instead of a failure mid-run.

    Ours rather than SpeechBrain's `load_data_csv`, which takes every `$word` in a value for a variable to
    replace, so that a file named `a$b.wav` could not be listed.
    """
    return _read_rows(csv_path, data_root, columns)[0]


def _read_rows(
    csv_path: Path, data_root: str, columns: list[str], optional: Sequence[str] = ()
) -> tuple[dict[str, dict], dict[str, int]]:
    """`read_manifest`'s rows, and the CSV line of each ID; `optional` columns may be absent or empty (read as "")."""
    if not csv_path.is_file():
        raise ManifestError(f"manifest not found: {csv_path}")
    rows_by_id: dict[str, dict] = {}
    line_by_id: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        header = reader.fieldnames or []
        missing = [column for column in columns if column not in header]
        if missing:
            raise ManifestError(f"{csv_path} lacks column(s) {missing}; it has {header}")
        for row in reader:
            example_id = row.pop("ID")
            if example_id in line_by_id:
                first_line = line_by_id[example_id]
                raise ManifestError(
                    f"{csv_path} line {reader.line_num}: duplicate ID '{example_id}' (first on line {first_line})"
                )
            line_by_id[example_id] = reader.line_num
            where = f"{csv_path} line {reader.line_num} (ID {example_id})"
            parsed = _parse_row(row, data_root, [c for c in columns if c != "ID"], where)
            rows_by_id[example_id] = parsed | {column: parsed.get(column) or "" for column in optional}
    if not rows_by_id:
        raise ManifestError(f"{csv_path} lists no examples")
    path_columns = [column for column in [*columns, *optional] if column.endswith("_wav")]
    _check_files_exist(csv_path, rows_by_id, line_by_id, path_columns, optional)
    return rows_by_id, line_by_id


def check_manifest_audio(
    csv_path: str | Path,
    data_root: str,
    num_spks: int,
    with_noise: bool,
    requirements: AudioRequirements,
    ids_name_files: bool = False,
    skip_bad: bool = False,
    min_talkers: int | None = None,
) -> dict[str, str]:
    """Check every row's audio as prepare_data.py checks a tree's (`speechsep.data.audio_checks.check_example`):
    for manifests written by hand or by another tool (`skip_prep`), so that a wrong rate, a stereo file, a source
    shorter than its mixture or a mixture shorter than the model's input is one line naming the CSV line before
    training, not a crash in a loader (for the test set, after training). `ids_name_files`: the IDs name the
    files written for each example (the test set's audio examples), so they must be safe file names.
    `skip_bad`: return the reason of each bad row by ID instead of failing on the first (none usable still fails).
    `min_talkers`: the sources beyond that many may be silent, empty or absent (mixtures of fewer talkers).
    """
    csv_path = Path(csv_path)
    names = signal_names(num_spks, with_noise)
    optional = optional_columns(num_spks, min_talkers)
    required = ["ID"] + [f"{name}_wav" for name in names if f"{name}_wav" not in optional]
    rows_by_id, line_by_id = _read_rows(csv_path, data_root, required, optional)

    def problem(example_id: str) -> str | None:
        if ids_name_files and (reason := name_problem(example_id)):
            return f"ID {reason}"
        row = rows_by_id[example_id]
        paths = [row[f"{name}_wav"] for name in names if row[f"{name}_wav"]]
        references = [row[f"{name}_wav"] for name in names if name.startswith("s")][:min_talkers]
        try:
            check_example(paths, references, requirements)
        except AudioCheckError as err:
            return str(err)
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:  # I/O bound; soundfile and numpy release the GIL
        problems = list(pool.map(problem, rows_by_id))
    bad = {example_id: reason for example_id, reason in zip(rows_by_id, problems) if reason is not None}
    if bad and (not skip_bad or len(bad) == len(rows_by_id)):
        example_id, reason = next(iter(bad.items()))
        none_usable = f" (and no row of {len(rows_by_id)} is usable)" if skip_bad else ""
        raise ManifestError(f"{csv_path} line {line_by_id[example_id]} (ID {example_id}): {reason}{none_usable}")
    return bad


def write_manifest_without(csv_path: str | Path, example_ids: set[str], target: Path) -> None:
    """Copy the manifest at `csv_path` to `target` without the rows of `example_ids`, header and values as they
    are. Written whole (`speechsep.output_files`), as every rank of a DDP job writes the same file."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    id_column = next(column for column in reader.fieldnames if column.strip() == "ID")
    kept = [row for row in rows if (row[id_column] or "").strip() not in example_ids]
    target.parent.mkdir(parents=True, exist_ok=True)
    write_csv(target, kept, reader.fieldnames, overwrite=True)


def _parse_row(row: dict, data_root: str, columns: list[str], where: str) -> dict:
    """One row's values: `$data_root` replaced, `duration` a float (SpeechBrain's convention)."""
    for column in columns:
        if row.get(column) is None:
            raise ManifestError(f"{where}: no value for {column}")
    parsed = {
        key: data_root + value[len(DATA_ROOT) :] if isinstance(value, str) and value.startswith(DATA_ROOT) else value
        for key, value in row.items()
    }
    if "duration" in parsed:
        try:
            parsed["duration"] = float(parsed["duration"])
        except (TypeError, ValueError):
            raise ManifestError(f"{where}: duration {parsed['duration']!r} is not a number") from None
    return parsed


def _check_files_exist(
    csv_path: Path,
    rows_by_id: dict[str, dict],
    line_by_id: dict[str, int],
    path_columns: list[str],
    optional: Sequence[str] = (),
) -> None:
    """Fail naming the first missing file now, not when a loader reaches it (for the test set: after training); an
    `optional` column may be empty (no talker)."""
    entries = [
        (example_id, column, row[column])
        for example_id, row in rows_by_id.items()
        for column in path_columns
        if row[column] or column not in optional
    ]
    with ThreadPoolExecutor(max_workers=16) as pool:  # one stat each; threads hide a network file system's latency
        exists = list(pool.map(os.path.isfile, [path for _, _, path in entries]))
    for (example_id, column, path), is_file in zip(entries, exists):
        if not is_file:
            where = f"{csv_path} line {line_by_id[example_id]} (ID {example_id})"
            raise ManifestError(f"{where}: {column} file not found: {path}")


def separation_dataset(
    csv_path: str,
    data_root: str,
    num_spks: int,
    with_noise: bool = False,
    segment_len: int | None = None,
    random_crop: bool = False,
    seed: int = 0,
    min_talkers: int | None = None,
) -> SeparationDataset:
    """A dataset over a manifest, providing `id`, `mix_sig`, `s1_sig`, ... (and `noise_sig`); with `random_crop`,
    crops of `segment_len` samples drawn from (`seed`, epoch, example ID). With `min_talkers`, the source columns
    beyond that many may be absent or empty: those sources are zero (no talker)."""
    names = signal_names(num_spks, with_noise)
    optional = optional_columns(num_spks, min_talkers)
    required = ["ID"] + [f"{name}_wav" for name in names if f"{name}_wav" not in optional]
    rows_by_id = _read_rows(Path(csv_path), data_root, required, optional)[0]
    segment_reader = SegmentReader(segment_len, random_crop, seed)
    dataset = SeparationDataset(rows_by_id, segment_reader)
    dataset.add_dynamic_item(
        GeneratorDynamicItem(
            takes=["id"] + [f"{name}_wav" for name in names],
            func=segment_reader,
            provides=[[f"{name}_sig" for name in names]],
        )
    )
    dataset.set_output_keys(["id"] + [f"{name}_sig" for name in names])
    return dataset


def write_skipped_list(save_folder: Path, skipped: list[dict]) -> None:
    """`<save_folder>/skipped_files.csv`: split, mixture and reason of each item `skip_bad_files` left out."""
    report = Path(save_folder) / SKIPPED_FILE
    write_csv(report, skipped, SKIPPED_COLUMNS, overwrite=True)
    log_skipped(report, len(skipped))


def log_skipped(report: Path, count: int) -> None:
    """One warning that bad mixtures were left out, naming the list of them."""
    logger.warning(f"Skipped {count} bad mixtures (skip_bad_files=True); list in {report}")
