"""Data preparation: turn a WSJ0Mix, LibriMix or custom directory tree into train/valid/test CSV manifests.

The dataset type is detected from the tree itself. Every mixture is validated while walking (all sources
present, mono, same length as the mixture, the configured sample rate) and problems stop the preparation
with one line naming the path, unless `skip_bad_files` is set, in which case the bad items are listed in
`skipped_files.csv` and counted. Manifests use upstream SpeechBrain's column names (`mix_wav`, `s1_wav`, ...)
with paths written as `$data_root/...`, so they survive moving the corpus.

    python prepare_data.py DATA_FOLDER SAVE_FOLDER [--num_spks 2] [--sample_rate 8000] [--mode min]
"""

import argparse
import csv
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf

from speechsep.errors import RecipeError

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
OPTIONS_FILE = "prepare_options.json"
SKIPPED_FILE = "skipped_files.csv"
WSJ0MIX_SPLITS = {"train": "tr", "valid": "cv", "test": "tt"}
LIBRIMIX_SPLITS = {"valid": "dev", "test": "test"}
LIBRIMIX_TRAIN_SUBSETS = {"100": ["train-100"], "360": ["train-360"], "both": ["train-100", "train-360"]}
LAYOUTS = (
    "WSJ0Mix   <data_folder>/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix,s1,s2[,s3]}/*.wav",
    "LibriMix  <data_folder>/wav{8k,16k}/{min,max}/{train-100,train-360,dev,test}/"
    "{mix_clean,mix_both,s1,s2[,s3],noise}/*.wav",
    "custom    <data_folder>/{train,valid,test}/{mixture,source1,source2[,source3][,noise]}/*.wav",
)


class DataPreparationError(RecipeError):
    """The data folder does not hold what the config expects; the message names the path."""


@dataclass(frozen=True)
class SplitFolders:
    """Where one split's signals live: the mixture folder and one folder per source (plus noise)."""

    mixture: Path
    sources: list[Path]
    noise: Path | None = None


def detect_layout(data_folder: Path) -> str:
    """Tell 'wsj0mix', 'librimix' or 'custom' from the tree, or fail naming the folder and the layouts."""
    if not data_folder.is_dir():
        raise DataPreparationError(f"data_folder does not exist or is not a folder: {data_folder}")
    if all((data_folder / split / "mixture").is_dir() for split in SPLITS):
        return "custom"
    for rate_folder in data_folder.glob("wav*k/*"):
        if (rate_folder / "tt" / "mix").is_dir():
            return "wsj0mix"
        if (rate_folder / "test" / "s1").is_dir() and (rate_folder / "dev").is_dir():
            return "librimix"
    raise DataPreparationError(
        f"unknown data layout in {data_folder}; expected one of: " + " | ".join(LAYOUTS)
    )


def split_folders(
    data_folder: Path,
    layout: str,
    num_spks: int,
    sample_rate: int,
    mode: str,
    librimix_train_subset: str = "360",
    use_wham_noise: bool = False,
) -> dict[str, list[SplitFolders]]:
    """Map each of train/valid/test to the folders that hold its signals, per the layout's conventions."""
    if layout == "custom":
        return {
            split: [
                SplitFolders(
                    mixture=data_folder / split / "mixture",
                    sources=[data_folder / split / f"source{k}" for k in range(1, num_spks + 1)],
                    noise=_existing(data_folder / split / "noise"),
                )
            ]
            for split in SPLITS
        }

    if mode not in ("min", "max"):
        raise DataPreparationError(f"mode must be 'min' or 'max', got '{mode}'")
    if sample_rate % 1000:
        raise DataPreparationError(f"sample_rate must be 8000 or 16000 for {layout}, got {sample_rate}")
    root = data_folder / f"wav{sample_rate // 1000}k" / mode
    if not root.is_dir():
        available = sorted(str(p.relative_to(data_folder)) for p in data_folder.glob("wav*k/*") if p.is_dir())
        raise DataPreparationError(
            f"{root} not found (sample_rate={sample_rate}, mode={mode}); available: {available or 'none'}"
        )

    if layout == "wsj0mix":
        return {
            split: [SplitFolders(root / sub / "mix", [root / sub / f"s{k}" for k in range(1, num_spks + 1)])]
            for split, sub in WSJ0MIX_SPLITS.items()
        }

    if librimix_train_subset not in LIBRIMIX_TRAIN_SUBSETS:
        raise DataPreparationError(
            f"librimix_train_subset must be one of {list(LIBRIMIX_TRAIN_SUBSETS)}, got '{librimix_train_subset}'"
        )
    mixture_folder = "mix_both" if use_wham_noise else "mix_clean"
    subsets = {"train": LIBRIMIX_TRAIN_SUBSETS[librimix_train_subset], **{k: [v] for k, v in LIBRIMIX_SPLITS.items()}}
    return {
        split: [
            SplitFolders(
                root / sub / mixture_folder,
                [root / sub / f"s{k}" for k in range(1, num_spks + 1)],
                _existing(root / sub / "noise"),
            )
            for sub in subs
        ]
        for split, subs in subsets.items()
    }


def _existing(path: Path) -> Path | None:
    return path if path.is_dir() else None


def _check_item(mixture: Path, folders: SplitFolders, sample_rate: int) -> tuple[float, list[Path]]:
    """Validate one mixture and its sources; return (duration in s, [mixture, sources..., noise])."""
    paths = [mixture] + [folder / mixture.name for folder in folders.sources]
    if folders.noise is not None:
        paths.append(folders.noise / mixture.name)
    frames = None
    for path in paths:
        if not path.is_file():
            raise DataPreparationError(f"missing file {path} (expected next to mixture {mixture})")
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as err:
            raise DataPreparationError(f"unreadable audio file {path}: {err}") from None
        if info.frames == 0:
            raise DataPreparationError(f"empty audio file {path} (0 samples)")
        if info.channels != 1:
            raise DataPreparationError(f"{path} has {info.channels} channels, expected mono")
        if info.samplerate != sample_rate:
            raise DataPreparationError(f"{path} is sampled at {info.samplerate} Hz, the config says {sample_rate} Hz")
        if frames is not None and info.frames != frames:
            raise DataPreparationError(f"{path} has {info.frames} samples, its mixture {mixture} has {frames}")
        frames = frames if frames is not None else info.frames
    return frames / sample_rate, paths


def _manifest_rows(
    split: str, folders_list: list[SplitFolders], data_folder: Path, sample_rate: int, skipped: list[dict]
) -> list[dict]:
    """Walk one split and return its CSV rows; bad items go to `skipped` when it is not None."""
    rows = []
    for folders in folders_list:
        for folder in [folders.mixture, *folders.sources]:
            if not folder.is_dir():
                raise DataPreparationError(f"missing folder {folder} (needed for the {split} split)")
        mixtures = sorted(folders.mixture.glob("*.wav")) + sorted(folders.mixture.glob("*.flac"))
        if not mixtures:
            raise DataPreparationError(f"no .wav/.flac mixtures in {folders.mixture}")

        def check(mixture, folders=folders):
            try:
                return _check_item(mixture, folders, sample_rate)
            except DataPreparationError as err:
                if skipped is None:
                    raise
                return err

        with ThreadPoolExecutor(max_workers=8) as pool:  # sf.info is I/O bound
            results = list(pool.map(check, mixtures))
        for mixture, result in zip(mixtures, results):
            if isinstance(result, DataPreparationError):
                skipped.append({"split": split, "mixture": str(mixture), "reason": str(result)})
                continue
            duration, paths = result
            columns = ["mix_wav"] + [f"s{k}_wav" for k in range(1, len(folders.sources) + 1)]
            if folders.noise is not None:
                columns.append("noise_wav")
            row = {"ID": mixture.stem, "duration": round(duration, 4)}
            row.update({col: "$data_root/" + path.relative_to(data_folder).as_posix() for col, path in zip(columns, paths)})
            rows.append(row)
    return rows


@dataclass
class PrepareOptions:
    """Everything the manifests depend on: same options on a rerun means the CSVs are reused."""

    data_folder: str
    layout: str
    num_spks: int
    sample_rate: int
    mode: str
    librimix_train_subset: str
    use_wham_noise: bool
    skip_bad_files: bool


def prepare_data(
    data_folder: str | Path,
    save_folder: str | Path,
    num_spks: int = 2,
    sample_rate: int = 8000,
    mode: str = "min",
    librimix_train_subset: str = "360",
    use_wham_noise: bool = False,
    skip_bad_files: bool = False,
) -> dict[str, Path]:
    """Write `<save_folder>/{train,valid,test}.csv` for the tree in `data_folder`; return their paths."""
    data_folder = Path(data_folder).resolve()
    save_folder = Path(save_folder)
    layout = detect_layout(data_folder)
    options = PrepareOptions(
        str(data_folder), layout, num_spks, sample_rate, mode, str(librimix_train_subset),
        use_wham_noise, skip_bad_files,
    )
    csv_paths = {split: save_folder / f"{split}.csv" for split in SPLITS}
    options_path = save_folder / OPTIONS_FILE
    if options_path.is_file() and all(p.is_file() for p in csv_paths.values()):
        if json.loads(options_path.read_text()) == asdict(options):
            logger.info(f"Manifests in {save_folder} match the options; reusing them")
            return csv_paths
        logger.info(f"Data options changed since the manifests in {save_folder} were written; regenerating")

    folders = split_folders(data_folder, layout, num_spks, sample_rate, mode, str(librimix_train_subset), use_wham_noise)
    skipped: list[dict] | None = [] if skip_bad_files else None
    manifests = {split: _manifest_rows(split, folders[split], data_folder, sample_rate, skipped) for split in SPLITS}

    save_folder.mkdir(parents=True, exist_ok=True)
    options_path.unlink(missing_ok=True)  # written last: a crash below leaves no stale "match"
    for split, rows in manifests.items():
        if not rows:
            raise DataPreparationError(f"no usable mixtures for the {split} split in {data_folder}")
        with open(csv_paths[split], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        logger.info(f"{split}: {len(rows)} mixtures, {sum(r['duration'] for r in rows) / 3600:.2f} h -> {csv_paths[split]}")
    if skipped:
        report = save_folder / SKIPPED_FILE
        with open(report, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["split", "mixture", "reason"])
            writer.writeheader()
            writer.writerows(skipped)
        logger.warning(f"Skipped {len(skipped)} bad mixtures (skip_bad_files=True); list in {report}")
    options_path.write_text(json.dumps(asdict(options), indent=1))
    return csv_paths


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_folder")
    parser.add_argument("save_folder")
    parser.add_argument("--num_spks", type=int, default=2)
    parser.add_argument("--sample_rate", type=int, default=8000)
    parser.add_argument("--mode", default="min", choices=["min", "max"])
    parser.add_argument("--librimix_train_subset", default="360", choices=list(LIBRIMIX_TRAIN_SUBSETS))
    parser.add_argument("--use_wham_noise", action="store_true", help="LibriMix: use mix_both (noisy) mixtures")
    parser.add_argument("--skip_bad_files", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = prepare_data(**vars(args))
    except DataPreparationError as err:
        raise SystemExit(f"error: {err}")
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
