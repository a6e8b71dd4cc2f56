"""The README.md that `export.py` writes beside an exported model: what it is, how it was trained and scored.

Everything in it is read from the folder being exported: the modules of the built model, the training run's
`hyperparams.yaml` (corpus, config, training length) and its `test_results_summary.json` (test scores), found
where the record puts them relative to the folder (a copied or moved run shows its own scores). What a folder
does not hold (a published model has no training record) is said to be unknown, never guessed. Paths of the
machine it was trained on are shown by their last component only. An export of an export carries the
training and test score sections of the first export's card over, so that they are not lost to "unknown".
"""

import datetime
import json
from pathlib import Path

import torch

from speechsep.training.config import resolved_values

# Keys of a run's config that say how it was trained, in the order the card lists them.
TRAINING_KEYS = (
    "experiment_name",
    "data_folder",
    "mixture_mode",
    "use_wham_noise",
    "dynamic_mixing",
    "N_epochs",
    "batch_size",
    "lr",
    "training_signal_len",
    "seed",
)
PATH_KEYS = ("data_folder",)  # shown by name: the card holds no path of the training machine
TITLE = "# Speech separation model:"  # how a card begins: how a re-export knows a card of this module
CARRIED_SECTIONS = ("Training", "Test scores")  # what a re-export copies from the earlier export's card
SCORES = (("si-snr_i", "SI-SNRi"), ("sdr_i", "SDRi"), ("si-snr", "SI-SNR"), ("sdr", "SDR"))


def _parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _class_name(module: torch.nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _name(path) -> str:
    return Path(str(path)).name


def _run_record(model_dir: Path) -> dict:
    """A training run's config, references resolved with the run where it is now, or {} for a folder that is
    not a run."""
    if not (model_dir / "save").is_dir():
        return {}
    try:
        record = resolved_values((model_dir / "hyperparams.yaml").read_text(), {"output_folder": str(model_dir)})
    except Exception:  # unreadable or not a config: the card says the training is unknown
        return {}
    return record if isinstance(record, dict) else {}


def _test_summary(model_dir: Path, record: dict) -> dict:
    """The run's test summary, if its results folder lies in the folder being exported (one elsewhere may be
    another run's)."""
    folder = record.get("results_folder")
    if not isinstance(folder, str) or not Path(folder).resolve().is_relative_to(model_dir.resolve()):
        return {}
    try:
        summary = json.loads((Path(folder) / "test_results_summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def carried_sections(earlier_card: str) -> dict[str, list[str]]:
    """The `CARRIED_SECTIONS` of a card this module rendered (their lines, heading and blank lines excluded), or
    {} for any other text (a README of the user's, a published model's)."""
    if not earlier_card.startswith(TITLE):
        return {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in earlier_card.splitlines():
        if line.startswith("## "):
            current = line[3:].strip() if line[3:].strip() in CARRIED_SECTIONS else None
            if current:
                sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: _strip_blank(lines) for name, lines in sections.items() if _strip_blank(lines)}


def _strip_blank(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def render(
    model_dir: Path,
    source_description: str,
    modules: dict,
    num_spks: int,
    sample_rate: int,
    checkpoint: str | None = None,
    earlier_card: str | None = None,
) -> str:
    """The model card of an export of `model_dir`, whose built `modules` are encoder, masknet and decoder, from
    the run's `checkpoint` (its folder name) when `model_dir` is a run. `earlier_card` is the card of the export
    that `model_dir` is, if it is one: its training and test score sections are carried over, since the weights
    are the same."""
    record = _run_record(Path(model_dir))
    summary = _test_summary(Path(model_dir), record)
    carried = {} if record or earlier_card is None else carried_sections(earlier_card)
    total = sum(_parameters(module) for module in modules.values())
    exported = f"Exported on {datetime.date.today().isoformat()} by this recipe's `export.py` from {source_description}"
    if carried:
        exported += "; the training and test scores below are carried over from its card"
    lines = [
        f"{TITLE} {num_spks} speakers at {sample_rate} Hz",
        "",
        f"{exported}.",
        "",
        "## Architecture",
        "",
        "| module | class | parameters |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | `{_class_name(module)}` | {_parameters(module):,} |" for name, module in modules.items()]
    lines += [f"| total | | {total:,} ({total / 1e6:.2f} M) |", ""]

    lines += ["## Training", ""]
    if "Training" in carried:
        lines += [*carried["Training"], ""]
    elif record:
        shown = {key: _name(record[key]) if key in PATH_KEYS else record[key] for key in TRAINING_KEYS if key in record}
        lines += [f"- `{key}`: {value}" for key, value in shown.items()]
        lines += ["- config: `hyperparams.yaml` of the training run (this folder keeps only the model)", ""]
    else:
        lines += ["Unknown: the exported folder was not a training run of this recipe (no training record).", ""]

    lines += ["## Test scores", ""]
    scores = {key: summary[key] for key, _ in SCORES if isinstance(summary.get(key), dict)}
    scored = summary.get("scored") or {}
    if "Test scores" in carried:
        lines += carried["Test scores"]
    elif scores and checkpoint and scored.get("checkpoint", checkpoint) != checkpoint:
        lines += [
            f"None for this checkpoint: the run's test results score {scored['checkpoint']}, not the exported "
            f"{checkpoint} (`train.py <run>/hyperparams.yaml --output_folder=<run> --test_only` scores it)."
        ]
    elif scores:
        count = next(iter(scores.values())).get("count", "?")
        test_data = scored.get("test_data", record.get("test_data", "the test manifest"))
        test_set = f"`{_name(test_data)}` (from `{_name(scored.get('data_folder', record.get('data_folder', '?')))}`)"
        lines += [f"On the test set {test_set}, {count} mixtures:", ""]
        lines += ["| metric | mean (dB) | 95% CI |", "|---|---|---|"]
        for key, name in SCORES:
            if key in scores and scores[key]["mean"] is not None:
                score = scores[key]
                low, high = score.get("ci95_low"), score.get("ci95_high")
                interval = f"{low:.2f} .. {high:.2f}" if low is not None and high is not None else "n/a"
                lines.append(f"| {name} | {score['mean']:.2f} | {interval} |")
        shifts, consistency = record.get("test_shifts", 1), record.get("test_mixture_consistency", False)
        lines += [
            "",
            f"Test-time options of that run: `test_shifts` {shifts}, `test_mixture_consistency` {consistency}.",
        ]
        if "checkpoint" in scored:
            lines.append(f"Scored checkpoint: {scored['checkpoint']} (epoch {scored.get('epoch', '?')}).")
    else:
        lines += ["None found: the run has no `test_results_summary.json` (or this folder was not a run)."]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from speechbrain.inference.separation import SepformerSeparation",
        'model = SepformerSeparation.from_hparams(source="<this folder>", savedir="pretrained_models/mine")',
        "est_sources = model.separate_batch(mixture)  # [batch, time] -> [batch, time, num_spks]",
        "```",
        "",
        "```bash",
        "python separate.py --model <this folder> --output-dir separated recording.wav   # any length",
        "python train.py hparams/<config>.yaml --pretrained_separator=<this folder> --data_folder=...   # fine-tune",
        "```",
        "",
    ]
    return "\n".join(lines)
