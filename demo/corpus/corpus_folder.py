"""The synthetic corpus's root folder: its manifest, what happens to an existing root, and what in it is not ours.

A root holds one set of options. Nothing the generator did not write (the user's notes or results) is ever
removed: replacing a root that holds such files fails, naming them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from demo.corpus.options import GENERATOR_VERSION, MANIFEST_NAME, MIX_TYPES, SPLIT_FOLDERS, SPLITS, CorpusOptions
from speechsep.output_files import is_temporary, write_text

logger = logging.getLogger(__name__)


class CorpusInUseError(FileExistsError):
    """Another live process is generating the same corpus root."""


def read_manifest(root: Path) -> dict | None:
    """The corpus's manifest (options, summary, whether complete), or None without a readable one."""
    try:
        return json.loads((root / MANIFEST_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_manifest(root: Path, manifest: dict) -> None:
    """Replace the manifest whole (never a half-written one)."""
    write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n", overwrite=True)


def manifest_identity(options: CorpusOptions, root: Path) -> dict:
    """What a complete corpus must match to be reused: the generator's version, the root and the options (not the
    generator's module path, so that moving the code keeps corpora valid)."""
    return dict(version=GENERATOR_VERSION, root=str(root), options=dataclasses.asdict(options))


def prepare_root(root: Path, identity: dict, overwrite: bool) -> bool:
    """Decide what to do with an existing ``root``; True when it is already complete.

    Complete with the same identity: keep. Complete with another: fail, or wipe when
    ``overwrite``. Incomplete (an interrupted run): wipe. A folder without our manifest, or
    with anything in it that the generator does not write, is never touched.
    """
    manifest = read_manifest(root)
    if manifest is not None:
        complete = bool(manifest.get("complete"))
        if complete and all(manifest.get(key) == value for key, value in identity.items()):
            return True
        if complete and not overwrite:
            old_options = manifest.get("options", {})
            differences = {
                key: (old_options.get(key), value)
                for key, value in identity["options"].items()
                if old_options.get(key) != value
            }
            if manifest.get("root") != identity["root"]:
                differences["root"] = (manifest.get("root"), identity["root"])
            raise FileExistsError(
                f"{root} holds a synthetic corpus made with other options (old, new: "
                f"{differences or 'generator version'}); pass overwrite=True (--overwrite) to "
                "replace it, or use another output_dir"
            )
        refuse_foreign_files(root)
        logger.info("Replacing %s (%s)", root, "overwrite" if complete else "incomplete")
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and is not a synthetic corpus (no {MANIFEST_NAME}): refusing to write into it"
        )
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root, dict(identity, complete=False))
    return False


# What a generation writes, as relative paths with shell-style patterns per part: its folders (and their
# parents), and the files in them, whatever its options. ``metadata`` is a link to the metadata folder, or a copy.
_TRACKS = ("s[0-9]*", "noise", *MIX_TYPES)
_WAV_DIRS = [("wav*k", mode) for mode in ("min", "max")]
_MIXTURE_FOLDERS = [(*wav_dir, folder) for wav_dir in _WAV_DIRS for folder in SPLIT_FOLDERS.values()]
_OWN_FOLDERS = (
    ("sources",),
    *[("sources", split) for split in SPLITS],
    *[("sources", split, "*") for split in SPLITS],
    ("metadata",),
    ("wav*k",),
    *_WAV_DIRS,
    *[(*wav_dir, "metadata") for wav_dir in _WAV_DIRS],
    *_MIXTURE_FOLDERS,
    *[(*folder, track) for folder in _MIXTURE_FOLDERS for track in _TRACKS],
)
_OWN_FILES = (
    (MANIFEST_NAME,),
    ("sources", "speakers.csv"),
    ("sources", "utterances.csv"),
    *[("sources", split, "*", "*.wav") for split in SPLITS],
    ("metadata",),  # the link, when it points nowhere
    ("metadata", "mixture_*.csv"),
    *[(*wav_dir, "metadata", "mixture_*.csv") for wav_dir in _WAV_DIRS],
    *[(*folder, track, "*.wav") for folder in _MIXTURE_FOLDERS for track in _TRACKS],
)


def _matches(parts: tuple[str, ...], patterns: Sequence[tuple[str, ...]]) -> bool:
    return any(len(parts) == len(pattern) and all(map(fnmatch.fnmatchcase, parts, pattern)) for pattern in patterns)


def foreign_files(root: Path) -> list[Path]:
    """What under ``root`` a generation does not write (the user's notes, results, folders), sorted; a foreign
    folder is listed, not what it holds."""
    foreign = []
    for folder, folders, files in os.walk(root):  # links are listed, not followed
        relative = Path(folder).relative_to(root).parts
        own_folders = [name for name in folders if _matches((*relative, name), _OWN_FOLDERS)]
        foreign += [Path(folder, name) for name in folders if name not in own_folders]
        foreign += [
            Path(folder, name) for name in files if not (_matches((*relative, name), _OWN_FILES) or is_temporary(name))
        ]
        folders[:] = own_folders
    return sorted(foreign)


def refuse_foreign_files(root: Path, shown: int = 3) -> None:
    """Raise FileExistsError naming the first few `foreign_files` of ``root``, which replacing it would remove."""
    foreign = foreign_files(root)
    if foreign:
        names = ", ".join(str(path.relative_to(root)) for path in foreign[:shown])
        more = f" and {len(foreign) - shown} more" if len(foreign) > shown else ""
        raise FileExistsError(
            f"{root} holds files the generator did not write ({names}{more}), which replacing it would remove: "
            "move them out of it, or use another output_dir"
        )


def disk_megabytes(root: Path) -> float:
    """What the corpus takes on disk, for its summary."""
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) / 1e6
