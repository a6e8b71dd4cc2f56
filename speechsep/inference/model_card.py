"""The README.md that `export.py` writes beside an exported model: what it is, how it was trained and scored.

Everything in it is read from the folder being exported: the modules of the built model, the training run's
`hyperparams.yaml` (corpus, config, training length) and its `test_results_summary.json` (test scores), found
where the record puts them relative to the folder (a copied or moved run shows its own scores). What a folder
does not hold (a published model has no training record) is said to be unknown, never guessed. Paths of the
machine it was trained on are shown by their last component only.
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


def render(
    model_dir: Path,
    source_description: str,
    modules: dict,
    num_spks: int,
    sample_rate: int,
    checkpoint: str | None = None,
) -> str:
    """The model card of an export of `model_dir`, whose built `modules` are encoder, masknet and decoder, from
    the run's `checkpoint` (its folder name) when `model_dir` is a run."""
    record = _run_record(Path(model_dir))
    summary = _test_summary(Path(model_dir), record)
    total = sum(_parameters(module) for module in modules.values())
    lines = [
        f"# Speech separation model: {num_spks} speakers at {sample_rate} Hz",
        "",
        f"Exported on {datetime.date.today().isoformat()} by this recipe's `export.py` from {source_description}.",
        "",
        "## Architecture",
        "",
        "| module | class | parameters |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | `{_class_name(module)}` | {_parameters(module):,} |" for name, module in modules.items()]
    lines += [f"| total | | {total:,} ({total / 1e6:.2f} M) |", ""]

    lines += ["## Training", ""]
    if record:
        shown = {key: _name(record[key]) if key in PATH_KEYS else record[key] for key in TRAINING_KEYS if key in record}
        lines += [f"- `{key}`: {value}" for key, value in shown.items()]
        lines += ["- config: `hyperparams.yaml` of the training run (this folder keeps only the model)", ""]
    else:
        lines += ["Unknown: the exported folder was not a training run of this recipe (no training record).", ""]

    lines += ["## Test scores", ""]
    scores = {key: summary[key] for key, _ in SCORES if isinstance(summary.get(key), dict)}
    scored = summary.get("scored") or {}
    if scores and checkpoint and scored.get("checkpoint", checkpoint) != checkpoint:
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
            if key in scores:
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
