"""Data preparation: turn a WSJ0Mix, WHAM!, WHAMR!, LibriMix, Aishell1Mix or custom tree into CSV manifests.

The dataset type is detected from the tree itself (`speechsep.data.layouts`). The task picks the mixtures and
targets: separation of clean (`mix_clean`) or noisy (`mix_both`, `use_wham_noise`) mixtures into their speakers,
or enhancement (`num_spks` 1) of one speaker in noise (`mix_single` -> `s1`) or of the clean mixture in noise
(`enhancement_both`: `mix_both` -> `mix_clean`). WHAMR!'s inputs are its reverberant mixtures and its targets the
anechoic sources, as its published results are scored (denoising, dereverberation and separation). Every mixture
is validated while walking (all sources present, mono, same length as the mixture, the configured sample rate,
finite samples, no all-zero source) and problems stop the preparation with one line naming the path, unless
`skip_bad_files` is set, in which case the bad items are listed in `skipped_files.csv` and counted. Manifests use
upstream SpeechBrain's column names (`mix_wav`, `s1_wav`, ...) with paths written as `$data_root/...`, so they
survive moving the corpus. They are reused on a rerun only when the options and the audio files (names, sizes,
mtimes) are unchanged.

    python prepare_data.py DATA_FOLDER SAVE_FOLDER [--num_spks 2] [--sample_rate 8000] [--mode min]
        [--use_wham_noise] [--task enhancement --num_spks 1]
"""

import argparse
import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from speechsep.data.audio import is_audio_name
from speechsep.data.audio_checks import AudioCheckError, AudioRequirements, check_example, check_file, printable
from speechsep.data.layouts import (
    LIBRIMIX_TRAIN_SUBSETS,
    SPLITS,
    DataPreparationError,
    SplitFolders,
    detect_layout,
    split_folders,
)
from speechsep.data.manifests import SKIPPED_COLUMNS, SKIPPED_FILE, log_skipped
from speechsep.errors import RecipeError
from speechsep.output_files import csv_content, text_content, write_files
from speechsep.training.preflight import DEFAULT_TASK, MIXTURE_MODES, TASKS, check_mixture_mode, check_num_spks

logger = logging.getLogger(__name__)

OPTIONS_FILE = "prepare_options.json"


def audio_files(folder: Path) -> list[Path]:
    """The audio files directly in `folder`, sorted by name; the extension matches in any case. Links count,
    broken ones too, and so does anything else with an audio name but a folder: the checks report them, where
    leaving them out would drop a mixture without a word."""
    with os.scandir(folder) as entries:
        return sorted(Path(entry.path) for entry in entries if is_audio_name(entry.name) and not entry.is_dir())


@dataclass(frozen=True)
class AudioFolder:
    """One folder's audio files by ID (file name without extension): how sources are matched to a mixture, so
    that `mix/a.WAV` finds `s1/a.wav`."""

    path: Path
    files_by_id: dict[str, list[Path]]

    @classmethod
    def scan(cls, path: Path) -> "AudioFolder":
        """List `path` once; lookups are then dictionary hits rather than a directory search per mixture."""
        files_by_id = defaultdict(list)
        for file in audio_files(path):
            files_by_id[file.stem].append(file)
        return cls(path, dict(files_by_id))

    def file_for(self, mixture: Path) -> Path:
        """The file with the mixture's ID, or a one-line error when there is none or more than one."""
        candidates = self.files_by_id.get(mixture.stem, [])
        if not candidates:
            raise DataPreparationError(f"missing file {self.path / mixture.name} (expected next to mixture {mixture})")
        if len(candidates) > 1:
            raise DataPreparationError(
                f"{len(candidates)} candidates for a source of mixture {mixture}: "
                f"{' and '.join(map(str, candidates))}; keep one"
            )
        return candidates[0]


def _check_item(
    mixture: Path,
    sources: list[AudioFolder],
    noise: AudioFolder | None,
    requirements: AudioRequirements,
    min_talkers: int | None = None,
) -> tuple[float, list[Path]]:
    """Validate one mixture and its sources (`speechsep.data.audio_checks`); return (duration in s, [mixture,
    sources..., noise]). A mixture that cannot be opened (a broken link) is named before its sources are looked for.
    With `min_talkers`, only that many sources must hold a talker: the others may be silent (fewer talkers)."""
    try:
        check_file(mixture)
        source_paths = [folder.file_for(mixture) for folder in sources]
        paths = [mixture, *source_paths] + ([noise.file_for(mixture)] if noise is not None else [])
        frames = check_example(paths, source_paths[:min_talkers], requirements)
    except AudioCheckError as err:
        raise DataPreparationError(str(err)) from None
    return frames / requirements.sample_rate, paths


def _manifest_rows(
    split: str,
    folders_list: list[SplitFolders],
    data_folder: Path,
    requirements: AudioRequirements,
    skipped: list[dict] | None,
    min_talkers: int | None = None,
) -> list[dict]:
    """Walk one split and return its CSV rows; bad items go to `skipped` when it is not None."""
    rows = []
    mixture_by_id: dict[str, Path] = {}
    for folders in folders_list:
        for folder in [folders.mixture, *folders.sources]:
            if not folder.is_dir():
                raise DataPreparationError(f"missing folder {folder} (needed for the {split} split)")
        mixtures = []
        for example_id, paths in AudioFolder.scan(folders.mixture).files_by_id.items():
            for path in paths:
                if example_id in mixture_by_id:
                    raise DataPreparationError(
                        f"duplicate ID '{example_id}' in the {split} split: {mixture_by_id[example_id]} and {path} "
                        "(an ID is the file name without extension); rename or remove one"
                    )
                mixture_by_id[example_id] = path
                mixtures.append(path)
        if not mixtures:
            raise DataPreparationError(f"no .wav/.flac mixtures in {folders.mixture}")
        sources = [AudioFolder.scan(folder) for folder in folders.sources]
        noise = AudioFolder.scan(folders.noise) if folders.noise is not None else None

        def check(mixture, sources=sources, noise=noise):
            try:
                return _check_item(mixture, sources, noise, requirements, min_talkers)
            except DataPreparationError as err:
                if skipped is None:
                    raise
                return err

        with ThreadPoolExecutor(max_workers=8) as pool:  # I/O bound; soundfile and numpy release the GIL
            results = list(pool.map(check, mixtures))
        for mixture, result in zip(mixtures, results):
            if isinstance(result, DataPreparationError):
                skipped.append({"split": split, "mixture": printable(mixture), "reason": printable(result)})
                continue
            duration, paths = result
            columns = ["mix_wav"] + [f"s{k}_wav" for k in range(1, len(folders.sources) + 1)]
            if folders.noise is not None:
                columns.append("noise_wav")
            row = {"ID": mixture.stem, "duration": round(duration, 4)}
            relative_paths = [path.relative_to(data_folder).as_posix() for path in paths]
            row.update({column: f"$data_root/{relative}" for column, relative in zip(columns, relative_paths)})
            rows.append(row)
    return rows


def tree_fingerprint(data_folder: Path, folders: dict[str, list[SplitFolders]]) -> dict:
    """Count and hash of (path, size, mtime) of every audio file the manifests are made from: reusing manifests of
    a changed tree would leave added mixtures unscored and fail at test time on removed ones."""
    digest = hashlib.sha256()
    num_files = 0
    for split_folders_list in folders.values():
        for split in split_folders_list:
            for folder in [split.mixture, *split.sources, split.noise]:
                if folder is None or not folder.is_dir():
                    continue  # _manifest_rows names a missing folder
                for path in audio_files(folder):
                    stat = path.stat() if path.exists() else path.lstat()  # a broken link is reported later
                    entry = f"{path.relative_to(data_folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
                    digest.update(os.fsencode(entry))  # names that are not UTF-8 are reported later
                    num_files += 1
    return {"audio_files": num_files, "sha256": digest.hexdigest()}


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
    task: str = DEFAULT_TASK
    min_samples: int = 1
    splits: list[str] = field(default_factory=lambda: list(SPLITS))  # a --test_only run prepares "test" alone
    min_talkers: int | None = None  # sources beyond this many may be silent (mixtures of fewer talkers)


def _manifests_are_current(options_path: Path, options: PrepareOptions, fingerprint: dict) -> bool:
    """Whether the manifests next to `options_path` were made with these options from these files; logs why not."""
    save_folder = options_path.parent
    try:
        stored = json.loads(options_path.read_text())
    except json.JSONDecodeError:
        logger.info(f"{options_path} is unreadable; regenerating the manifests in {save_folder}")
        return False
    stored_fingerprint = stored.pop("tree", None)
    stored.setdefault("min_talkers", None)  # manifests written before it: every source holds a talker
    if stored != asdict(options):
        logger.info(f"Data options changed since the manifests in {save_folder} were written; regenerating")
        return False
    if stored_fingerprint != fingerprint:
        before = (stored_fingerprint or {}).get("audio_files", "?")
        logger.info(
            f"Audio files in the data tree changed (added, removed or rewritten; {before} then, "
            f"{fingerprint['audio_files']} now) since the manifests in {save_folder} were written; regenerating"
        )
        return False
    logger.info(f"Manifests in {save_folder} match the options and the data tree; reusing them")
    return True


def prepare_data(
    data_folder: str | Path,
    save_folder: str | Path,
    num_spks: int = 2,
    sample_rate: int = 8000,
    mode: str = "min",
    librimix_train_subset: str = "360",
    use_wham_noise: bool = False,
    skip_bad_files: bool = False,
    task: str = DEFAULT_TASK,
    min_samples: int = 1,
    splits: Sequence[str] = SPLITS,
    min_talkers: int | None = None,
) -> dict[str, Path]:
    """Write `<save_folder>/<split>.csv` for each of `splits` of the tree in `data_folder`; return their paths.

    `min_samples`: the model's shortest input (`speechsep.models.filterbank.shortest_input`); shorter mixtures
    are bad items, found now rather than when the test stage reaches them after training. `min_talkers`: for a model
    trained on fewer talkers than its outputs, the sources beyond that many may be silent (no talker). The manifests, the
    list of skipped items and `prepare_options.json` are written as one group (`output_files.write_files`):
    a failed write leaves the previous ones as they were, which do not match the new options or tree.
    """
    check_num_spks(num_spks, task)
    check_mixture_mode(mode)
    splits = list(splits)
    if not splits or any(split not in SPLITS for split in splits):
        raise DataPreparationError(f"splits must be some of {list(SPLITS)}, got {splits}")
    data_folder = Path(data_folder).resolve()
    save_folder = Path(save_folder)
    layout = detect_layout(data_folder)
    logger.info(f"{data_folder} is a {layout} tree")
    options = PrepareOptions(
        str(data_folder),
        layout,
        num_spks,
        sample_rate,
        mode,
        str(librimix_train_subset),
        use_wham_noise,
        skip_bad_files,
        task,
        min_samples,
        splits,
        min_talkers,
    )
    folders = split_folders(
        data_folder, layout, num_spks, sample_rate, mode, str(librimix_train_subset), use_wham_noise, task
    )
    folders = {split: folders[split] for split in splits}
    fingerprint = tree_fingerprint(data_folder, folders)
    csv_paths = {split: save_folder / f"{split}.csv" for split in splits}
    options_path = save_folder / OPTIONS_FILE
    manifests_exist = all(p.is_file() for p in [options_path, *csv_paths.values()])
    if manifests_exist and _manifests_are_current(options_path, options, fingerprint):
        return csv_paths
    make_save_folder(save_folder)  # before the walk, which takes minutes on a full corpus

    skipped: list[dict] | None = [] if skip_bad_files else None
    requirements = AudioRequirements(sample_rate=sample_rate, mono=True, min_samples=min_samples)
    manifests = {
        split: _manifest_rows(split, folders[split], data_folder, requirements, skipped, min_talkers)
        for split in splits
    }
    for split, rows in manifests.items():
        if not rows:
            raise DataPreparationError(f"no usable mixtures for the {split} split in {data_folder}")

    outputs = {csv_paths[split]: csv_content(rows) for split, rows in manifests.items()}
    if skipped:
        outputs[save_folder / SKIPPED_FILE] = csv_content(skipped, SKIPPED_COLUMNS)
    # Named last: the options say that the manifests beside them are current.
    outputs[options_path] = text_content(json.dumps({**asdict(options), "tree": fingerprint}, indent=1))
    write_files(outputs, overwrite=True)
    if not skipped:  # a list from an earlier preparation would mislead
        (save_folder / SKIPPED_FILE).unlink(missing_ok=True)
    for split, rows in manifests.items():
        hours = sum(row["duration"] for row in rows) / 3600
        logger.info(f"{split}: {len(rows)} mixtures, {hours:.2f} h -> {csv_paths[split]}")
    if skipped:
        log_skipped(save_folder / SKIPPED_FILE, len(skipped))
    return csv_paths


def make_save_folder(save_folder: Path) -> None:
    """Create `save_folder` (and its parents), or fail in one line naming it."""
    try:
        save_folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataPreparationError(
            f"save_folder {save_folder} cannot be created ({err.strerror or err}); choose another folder"
        ) from None


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_folder")
    parser.add_argument("save_folder")
    parser.add_argument("--num_spks", type=int, default=2)
    parser.add_argument("--sample_rate", type=int, default=8000)
    parser.add_argument("--mode", default="min", choices=list(MIXTURE_MODES))
    parser.add_argument("--librimix_train_subset", default="360", choices=list(LIBRIMIX_TRAIN_SUBSETS))
    parser.add_argument("--use_wham_noise", action="store_true", help="noisy mixtures (mix_both, or mix_single)")
    parser.add_argument("--task", default=DEFAULT_TASK, choices=list(TASKS), help="enhancement*: with --num_spks 1")
    parser.add_argument("--skip_bad_files", action="store_true")
    parser.add_argument("--min_samples", type=int, default=1, help="shortest usable mixture, in samples")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = prepare_data(**vars(args))
    except RecipeError as err:  # output_files.OutputError too
        raise SystemExit(f"error: {err}") from None
    except OSError as err:  # a tree or folder that cannot be read
        raise SystemExit(f"error: {err.filename}: {err.strerror}" if err.filename else f"error: {err}") from None
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
