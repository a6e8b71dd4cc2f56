"""Counting talkers: calibrating the rule, what separate.py writes, and a model trained for 1 to 3 talkers.

    python -m bench.run_all --only counting      # -> the "Counting talkers" section of bench/RESULTS.md
    python -m bench.bench_counting [--quick]

Two models (links under results/, as bench_streaming's): `results/demo` (make demo: 2 outputs, trained on 2 talkers)
and `results/demo-talkers` (`python train.py hparams/demo-talkers.yaml --train_budget_minutes=null --N_epochs=11`:
3 outputs, trained on 2-3 talkers, then 1-3). Every input is from the embedded corpus's held-out talkers (make demo):

- calibration, on the *dev* talkers: the demo model's tracks for 50 single-talker utterances and the 150 two-talker
  mixtures, the talkers model's for its 150 valid mixtures (1, 2, 3 talkers); every (level, copy score) pair of
  `CountingRule` on a grid is ranked by the demo model's worse accuracy, then by the sum of all; the rule's defaults
  are the best pair.
- separate.py itself (its JSON lines), default rule, on the *test* talkers: 50 single-talker utterances and the 150
  two-talker test mixtures, with each model.
- the talkers run's test stage (`test_results.csv`: true and found count per mixture, the level of the outputs left
  without a talker) and its SI-SNRi on the 150 two-talker test mixtures beside the 2-output demo network trained
  with the same budget (11 epochs of 3360 mixtures; `results/streaming/demo`, bench_streaming's).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from bench.markdown import run_score_row, section

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "MiniLibri2Mix"  # the embedded corpus (make demo)
DEMO_MODEL = ROOT / "results" / "demo"
TALKERS_RUN = ROOT / "results" / "demo-talkers"
TWO_OUTPUT_RUN = ROOT / "results" / "streaming" / "demo"  # demo.yaml, 11 epochs (bench_streaming's quality runs)
TALKERS_COMMAND = "python train.py hparams/demo-talkers.yaml --train_budget_minutes=null --N_epochs=11"
ON_2MIX = "libri2mix_test"  # the talkers run's --test_only on the corpus's two-talker test mixtures
ON_2MIX_COMMAND = (
    "python train.py hparams/demo-talkers.yaml --output_folder=results/demo-talkers --test_only --skip_prep=True "
    f"--data_folder=data/MiniLibri2Mix --test_data=results/streaming/demo/save/test.csv --results_folder=results/demo-talkers/{ON_2MIX}"
)
LEVELS_DB = (-30.0, -25.0, -20.0, -18.0, -16.0, -14.0, -12.0)
COPY_SCORES = (0.6, 0.65, 0.68, 0.7, 0.72, 0.74, 0.76, 0.8)
NUM_FILES = 50


def single_talker_files(split: str, count: int = NUM_FILES, seed: int = 0) -> list[Path]:
    """`count` single-talker utterances of the corpus's `split` talkers (a fixed draw)."""
    files = sorted((CORPUS / "sources" / split).glob("*/*.wav"))
    return [files[i] for i in sorted(np.random.default_rng(seed).choice(len(files), count, replace=False))]


def two_talker_mixtures(split: str, count: int | None = None) -> list[Path]:
    files = sorted((CORPUS / "wav8k" / "min" / split / "mix_clean").glob("*.wav"))
    return files[:count] if count else files


def held_out_mixtures(corpus_split: Path) -> dict[int, list[Path]]:
    """A talkers run's valid or test mixtures by their number of talkers (the sources that are not silent)."""
    by_count: dict[int, list[Path]] = {}
    for mixture in sorted((corpus_split / "mixture").glob("*.wav")):
        sources = sorted(corpus_split.glob(f"source*/{mixture.name}"))
        count = sum(bool(np.any(sf.read(path)[0])) for path in sources)
        by_count.setdefault(count, []).append(mixture)
    return by_count


def run_corpus(run: Path) -> Path:
    """The corpus folder a run of a recordings config trained and was scored on (its record's `corpus_folder`)."""
    import ruamel.yaml

    from speechsep.inference.model_config import resolve_references

    record = (run / "hyperparams.yaml").read_text()
    return Path(ruamel.yaml.YAML().load(resolve_references(record).getvalue())["corpus_folder"])


def separated(model: Path, inputs: dict[int, list[Path]]) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Each input's estimates and mixture, by its number of talkers, as separate.py computes them (fp32)."""
    from speechsep.inference.files import FileSeparator, SeparationOptions
    from speechsep.inference.model_folder import load_separator

    separator = FileSeparator(
        load_separator(str(model), device="cpu"), SeparationOptions(progress=False, precision="fp32")
    )
    result = {}
    for count, files in inputs.items():
        result[count] = []
        for path in files:
            mixture = torch.from_numpy(sf.read(path, dtype="float32")[0])
            result[count].append((separator.separate(mixture), mixture))
    return result


def calibration(quick: bool) -> tuple[list[dict], dict]:
    """Every rule of the grid, scored on the dev talkers of both models: (grid rows, the best row)."""
    from speechsep.inference.counting import CountingRule, count_talkers

    files = 5 if quick else NUM_FILES
    cases = {
        "demo": separated(
            DEMO_MODEL, {1: single_talker_files("dev", files), 2: two_talker_mixtures("dev", 5 if quick else None)}
        )
    }
    if (TALKERS_RUN / "hyperparams.yaml").is_file():
        valid = held_out_mixtures(run_corpus(TALKERS_RUN) / "valid")
        cases["talkers"] = separated(TALKERS_RUN, {count: paths[:files] for count, paths in valid.items()})
    grid = []
    levels, scores = (LEVELS_DB[::3], COPY_SCORES[::3]) if quick else (LEVELS_DB, COPY_SCORES)
    for level, score in itertools.product(levels, scores):
        rule = CountingRule(min_level_db=level, min_copy_score=score)
        row = {"min_level_db": level, "min_copy_score": score}
        for model, by_count in cases.items():
            for count, pairs in by_count.items():
                row[f"{model} {count}"] = float(
                    np.mean([count_talkers(e, m, 8000, rule).talkers == count for e, m in pairs])
                )
        grid.append(row)
    accuracy_keys = [key for key in grid[0] if " " in key]
    demo_keys = [key for key in accuracy_keys if key.startswith("demo")]  # a model of K outputs for K talkers first
    best = max(grid, key=lambda row: (min(row[k] for k in demo_keys), sum(row[k] for k in accuracy_keys)))
    return grid, best


def separate_py_tracks(model: Path, files: list[Path], output_dir: Path) -> list[int]:
    """Run separate.py on `files`; the number of tracks it wrote for each (from its JSON lines)."""
    command = [sys.executable, str(ROOT / "separate.py"), "--model", str(model), "--output-dir", str(output_dir)]
    result = subprocess.run(
        [*command, "--quiet", "--precision", "fp32", *map(str, files)], capture_output=True, text=True, check=True
    )
    records = {record["input"]: record for record in map(json.loads, result.stdout.splitlines())}
    return [len(records[str(path)]["tracks"]) for path in files]


def separate_py_rows(quick: bool) -> list[str]:
    inputs = {
        1: single_talker_files("test", 5 if quick else NUM_FILES),
        2: two_talker_mixtures("test", 5 if quick else None),
    }
    rows = []
    for name, model in (
        ("make demo (2 outputs, 2 talkers)", DEMO_MODEL),
        ("demo-talkers (3 outputs, 1-3)", TALKERS_RUN),
    ):
        if not (model / "hyperparams.yaml").is_file():
            rows.append(f"| {name} | not run (no {model}) | | |")
            continue
        cells = []
        with tempfile.TemporaryDirectory() as folder:
            for count, files in inputs.items():
                tracks = separate_py_tracks(model, files, Path(folder) / str(count))
                spread = ", ".join(f"{n}: {tracks.count(n)}" for n in sorted(set(tracks)))
                cells.append(f"**{np.mean(np.array(tracks) == count):.0%}** of {len(files)} ({spread})")
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return rows


def read_rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as f:
        return [
            {key: value if key == "snt_id" else float(value) for key, value in row.items()} for row in csv.DictReader(f)
        ]


def trained_rows() -> tuple[list[str], list[str]]:
    """The talkers run's test stage by count, and the two-talker comparison with the 2-output run."""
    results = TALKERS_RUN / "test_results.csv"
    if not results.is_file():
        return [f"| not run (no {results}) | | | | |"], []
    rows = read_rows(results)
    by_count = []
    for count in sorted({int(row["talkers"]) for row in rows}):
        subset = [row for row in rows if int(row["talkers"]) == count]
        found = [int(row["talkers_found"]) for row in subset]
        spread = ", ".join(f"{n}: {found.count(n)}" for n in sorted(set(found)))
        silent = np.array([row["silent_output_db"] for row in subset if not np.isnan(row["silent_output_db"])])
        silence = (
            f"{silent.mean():.1f} / {silent.max():.1f} / {np.mean(silent <= -30):.0%}" if len(silent) else "(none left)"
        )
        si_snr_i = np.nanmean([row["si-snr_i"] for row in subset]) if count > 1 else float("nan")
        by_count.append(
            f"| {count} | {len(subset)} | **{np.mean(np.array(found) == count):.0%}** ({spread}) | {silence} | "
            + (f"{si_snr_i:.2f}" if count > 1 else f"(SI-SNR {np.mean([r['si-snr'] for r in subset]):.1f})")
            + " |"
        )
    comparison = [
        run_score_row("demo-talkers: 3 outputs, 1-3 talkers", TALKERS_RUN / ON_2MIX),
        run_score_row("demo: 2 outputs, 2 talkers", TWO_OUTPUT_RUN),
    ]
    return by_count, comparison


def run(quick: bool = False) -> str:
    torch.set_num_threads(2)
    from speechsep.inference.counting import CountingRule

    grid, best = calibration(quick)
    accuracy_keys = [key for key in grid[0] if " " in key]
    default = CountingRule()
    default_pair = (default.min_level_db, default.min_copy_score)

    def marks(row: dict) -> str:
        is_default = (row["min_level_db"], row["min_copy_score"]) == default_pair
        return (" (best)" if row is best else "") + (" (default)" if is_default else "")

    grid_rows = [
        f"| {row['min_level_db']:g}{marks(row)} | {row['min_copy_score']:g} | "
        + " | ".join(f"{row[key]:.0%}" for key in accuracy_keys)
        + " |"
        for row in grid
        if row["min_level_db"] in (-30, -16, -12, best["min_level_db"]) or row is best
    ]
    parts = [
        section(
            "## Counting talkers: calibrating the rule (dev talkers)",
            "Share of the inputs whose count `speechsep.inference.counting` gets right, by threshold pair: a track holds "
            "no talker below `min_level_db` (relative to the mixture), and is a copy of a louder one where their "
            "`copy_score` (the mean of the share of co-voiced frames at the same pitch and of the correlation of their "
            "log energy envelopes) reaches `min_copy_score`. Columns: model and true number "
            "of talkers (demo: the make demo model on single utterances and two-talker mixtures of the dev talkers; "
            "talkers: the 3-output run on its valid mixtures). Rows at a few levels; marked: the best pair by "
            "the demo model's worse column (the published models are of that kind: K outputs for K talkers), then by "
            "the sum of all columns, which is `CountingRule`'s default.",
            "min_level_db | min_copy_score | " + " | ".join(accuracy_keys),
            grid_rows,
        ),
        section(
            "### separate.py: tracks written (test talkers, default rule)",
            "`separate.py --model M --output-dir D FILES` on held-out talkers; the share of inputs that get as many "
            "tracks as they hold talkers, and how many tracks each got (tracks: inputs).",
            "model | one talker -> 1 track | two talkers -> 2 tracks",
            separate_py_rows(quick),
        ),
    ]
    by_count, comparison = trained_rows()
    parts.append(
        section(
            "### A model trained for 1 to 3 talkers (test talkers)",
            f"`{TALKERS_COMMAND}` (the demo's network with 3 outputs, 11 epochs of 3360 dynamic mixtures: two or "
            "three talkers each in epochs 1-7, then 1, 2 or 3), scored single pass on its 300 test "
            "mixtures of the corpus's test talkers (100 of each count). Found: separate.py's count of the estimates. "
            "Silent outputs: the outputs left without a talker, relative to the mixture, each brought to its level as "
            "separate.py does: mean / loudest / share at least 30 dB below.",
            "talkers | mixtures | counted right (found: mixtures) | silent outputs dB (mean / max / <= -30) | SI-SNRi dB",
            by_count,
        )
    )
    parts.append(
        section(
            "### Two talkers: the 3-output model beside a 2-output one of the same budget",
            f"Both the demo's network, 11 epochs of 3360 dynamic mixtures of the corpus's training talkers; scored single "
            f"pass on the corpus's 150 two-talker test mixtures (`{ON_2MIX_COMMAND}`).",
            "model | SI-SNRi dB (95% CI) | SDRi dB | mixtures",
            comparison,
        )
    )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 inputs per count: a smoke test")
    print(run(quick=parser.parse_args().quick))


if __name__ == "__main__":
    main()
