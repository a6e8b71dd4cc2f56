"""Corpus layouts: which folders of a WSJ0-mix, WHAM!, WHAMR!, LibriMix, Aishell1Mix or custom tree hold each
split's mixtures and targets, and which layout a tree is.

`prepare_data.py` walks the folders `split_folders` names; `train.py` asks `detect_layout` before anything is built
(some options cannot be used on reverberant corpora). The task and mixture mode are checked before they get here
(`speechsep.training.preflight`).
"""

from dataclasses import dataclass
from pathlib import Path

from speechsep.errors import RecipeError

SPLITS = ("train", "valid", "test")  # the manifests' splits
WSJ0MIX_SPLITS = {"train": "tr", "valid": "cv", "test": "tt"}  # WHAM! and WHAMR! too
LIBRIMIX_SPLITS = {"valid": "dev", "test": "test"}
AISHELL1MIX_SPLITS = {"train": "train", "valid": "dev", "test": "test"}
LIBRIMIX_TRAIN_SUBSETS = {"100": ["train-100"], "360": ["train-360"], "both": ["train-100", "train-360"]}
# The mixture folder of LibriMix-style trees (LibriMix, Aishell1Mix, WHAM!) per (task, noisy); WHAMR! adds _reverb.
MIXTURE_FOLDERS = {
    ("separation", False): "mix_clean",
    ("separation", True): "mix_both",
    ("enhancement", True): "mix_single",
    ("enhancement_both", True): "mix_both",
}
REVERBERANT_LAYOUTS = ("whamr",)  # mixtures that are not the sum of the targets (plus noise)
LAYOUTS = (
    "WSJ0Mix   <data_folder>/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix,s1,s2[,s3]}/*.wav",
    "WHAM!     <data_folder>/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix_clean,mix_both,mix_single,s1,s2,noise}/*.wav",
    (
        "WHAMR!    <data_folder>/wav{8k,16k}/{min,max}/{tr,cv,tt}/"
        "{mix_{clean,both,single}_{anechoic,reverb},s{1,2}_{anechoic,reverb},noise}/*.wav"
    ),
    (
        "LibriMix  <data_folder>/wav{8k,16k}/{min,max}/{train-100,train-360,dev,test}/"
        "{mix_clean,mix_both,mix_single,s1,s2[,s3],noise}/*.wav"
    ),
    (
        "Aishell1Mix  <data_folder>/wav{8k,16k}/{min,max}/{train,dev,test}/"
        "{mix_clean,mix_both,mix_single,s1,s2[,s3],noise}/*.wav"
    ),
    "custom    <data_folder>/{train,valid,test}/{mixture,source1[,source2,source3][,noise]}/*.wav (train/: not with dynamic mixing)",
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
    """Tell 'wsj0mix', 'wham', 'whamr', 'librimix', 'aishell1mix' or 'custom' from the tree, or fail naming the
    folder and the layouts. The test split's folders tell them apart: WSJ0Mix has `tt/mix`, WHAM! `tt/mix_clean`,
    WHAMR! `tt/s1_anechoic`, and of the `test`/`dev` trees Aishell1Mix trains on `train`, LibriMix on `train-*`.
    A tree that holds the folders of two layouts is refused naming both: reading one of them by the order in
    which the folders are listed would train on data the user may not have meant."""
    if not data_folder.is_dir():
        raise DataPreparationError(f"data_folder does not exist or is not a folder: {data_folder}")
    found = {}  # layout -> a folder that shows it
    if (data_folder / "test" / "mixture").is_dir():  # the other splits are looked for when prepared
        found["custom"] = data_folder / "test" / "mixture"
    for rate_folder in sorted(data_folder.glob("wav*k/*")):
        layout = _rate_folder_layout(rate_folder)
        if layout is not None:
            found.setdefault(layout, rate_folder)
    if len(found) > 1:
        raise DataPreparationError(
            f"{data_folder} holds the folders of {len(found)} layouts: "
            + " and ".join(f"{layout} ({folder})" for layout, folder in found.items())
            + "; point data_folder at a tree of one corpus"
        )
    if not found:
        raise DataPreparationError(f"unknown data layout in {data_folder}; expected one of: " + " | ".join(LAYOUTS))
    return next(iter(found))


def _rate_folder_layout(rate_folder: Path) -> str | None:
    """The layout of a corpus' `wav<rate>k/<mode>` folder, or None."""
    if (rate_folder / "tt" / "mix").is_dir():
        return "wsj0mix"
    if (rate_folder / "tt" / "mix_clean").is_dir():
        return "wham"
    if (rate_folder / "tt" / "s1_anechoic").is_dir():
        return "whamr"
    if (rate_folder / "test" / "s1").is_dir() and (rate_folder / "dev").is_dir():
        return "aishell1mix" if (rate_folder / "train").is_dir() else "librimix"
    return None


def check_task_fits_layout(data_folder: Path, layout: str, task: str, use_wham_noise: bool) -> None:
    """The corpus has the mixtures `task` needs: the enhancement tasks' are the noisy ones, which WSJ0Mix lacks;
    a custom tree has no clean mixtures for task=enhancement_both."""
    if task != "separation" and layout == "wsj0mix":
        raise DataPreparationError(
            f"{data_folder} is WSJ0Mix, which has no {'single-speaker ' if task == 'enhancement' else ''}noisy "
            f"mixtures for task={task} (WHAM!, WHAMR!, LibriMix and Aishell1Mix have them in {MIXTURE_FOLDERS[task, True]})"
        )
    if task == "enhancement_both" and layout == "custom":
        raise DataPreparationError(
            f"{data_folder} is a custom tree, which has no clean mixtures for task=enhancement_both: "
            "put each mixture's target in source1 and set task=enhancement"
        )
    if layout != "custom" and (task, use_wham_noise) not in MIXTURE_FOLDERS:
        raise DataPreparationError(
            f"task={task} removes noise: it needs use_wham_noise=True ({MIXTURE_FOLDERS[task, True]})"
        )


def split_folders(
    data_folder: Path,
    layout: str,
    num_spks: int,
    sample_rate: int,
    mode: str,
    librimix_train_subset: str,
    use_wham_noise: bool,
    task: str,
) -> dict[str, list[SplitFolders]]:
    """Map each of train/valid/test to the folders that hold its signals, per the layout's conventions."""
    check_task_fits_layout(data_folder, layout, task, use_wham_noise)
    if layout == "custom":
        return {
            split: [
                SplitFolders(
                    mixture=data_folder / split / "mixture",
                    sources=_source_folders(data_folder / split, "source", num_spks),
                    noise=_existing(data_folder / split / "noise"),
                )
            ]
            for split in SPLITS
        }

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
            split: [SplitFolders(root / sub / "mix", _source_folders(root / sub, "s", num_spks))]
            for split, sub in WSJ0MIX_SPLITS.items()
        }

    mixture_folder = MIXTURE_FOLDERS[task, use_wham_noise]
    source_suffix = ""
    if layout in ("wham", "whamr"):
        subsets = {split: [sub] for split, sub in WSJ0MIX_SPLITS.items()}
        if layout == "whamr":  # reverberant input, anechoic targets
            mixture_folder, source_suffix = f"{mixture_folder}_reverb", "_anechoic"
    elif layout == "aishell1mix":
        subsets = {split: [sub] for split, sub in AISHELL1MIX_SPLITS.items()}
    else:
        if librimix_train_subset not in LIBRIMIX_TRAIN_SUBSETS:
            raise DataPreparationError(
                f"librimix_train_subset must be one of {list(LIBRIMIX_TRAIN_SUBSETS)}, got '{librimix_train_subset}'"
            )
        subsets = {"train": LIBRIMIX_TRAIN_SUBSETS[librimix_train_subset]}
        subsets.update({split: [sub] for split, sub in LIBRIMIX_SPLITS.items()})

    def targets(split_folder: Path) -> list[Path]:
        if task == "enhancement_both":  # one target: the clean mixture of every speaker
            return [split_folder / f"mix_clean{source_suffix}"]
        return _source_folders(split_folder, "s", num_spks, source_suffix, task == "enhancement")

    return {
        split: [
            SplitFolders(root / sub / mixture_folder, targets(root / sub), _existing(root / sub / "noise"))
            for sub in subs
        ]
        for split, subs in subsets.items()
    }


def _existing(path: Path) -> Path | None:
    return path if path.is_dir() else None


def _source_folders(
    split_folder: Path, prefix: str, num_spks: int, suffix: str = "", single_speaker_mixtures: bool = False
) -> list[Path]:
    """`<prefix>1<suffix> .. <prefix>num_spks<suffix>` in `split_folder`; one more on disk means the mixtures hold
    more speakers than num_spks, and training on some of their sources would go wrong silently (unless the
    mixtures are a corpus's single-speaker ones, `mix_single`, which sit beside the other speakers' folders)."""
    extra = split_folder / f"{prefix}{num_spks + 1}{suffix}"
    if extra.is_dir() and not single_speaker_mixtures:
        raise DataPreparationError(
            f"found source folder {extra} but num_spks is {num_spks}; "
            "set num_spks to the number of speakers per mixture"
        )
    return [split_folder / f"{prefix}{k}{suffix}" for k in range(1, num_spks + 1)]
