"""Figures of a finished run: learning curve from `train_log.txt`, SI-SNRi histogram from `test_results.csv`.

python -m speechsep.evaluation.report results/demo
"""

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from speechsep.output_files import write_file  # noqa: E402

LABELS = {"si-snr_i": "SI-SNRi", "sdr_i": "SDRi", "si-snr": "SI-SNR", "sdr": "SDR"}
STAT = re.compile(r"(train|valid) ([\w-]+): ([-+.\deE]+)")


def read_train_log(path: Path) -> pd.DataFrame:
    """One row per epoch of a SpeechBrain FileTrainLogger file: epoch, lr, train_si-snr, valid_si-snr, ..."""
    rows = []
    for line in Path(path).read_text().splitlines():
        epoch = re.match(r"epoch: (\d+), lr: ([-+.\deE]+)", line)
        if not epoch:
            continue
        row = {"epoch": int(epoch.group(1)), "lr": float(epoch.group(2))}
        row.update({f"{stage}_{key}": float(value) for stage, key, value in STAT.findall(line)})
        rows.append(row)
    return pd.DataFrame(rows).drop_duplicates("epoch", keep="last")  # a resumed epoch is logged again


def plot_learning_curve(train_log: Path, png: Path) -> Path:
    """Train and valid SI-SNR (dB) per epoch."""
    log = read_train_log(train_log)
    fig, ax = plt.subplots(figsize=(6, 4))
    for stage in ("train", "valid"):
        if f"{stage}_si-snr" in log:
            ax.plot(log["epoch"], log[f"{stage}_si-snr"], marker="o", label=stage)
    ax.set(xlabel="epoch", ylabel="SI-SNR (dB)", title="Learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, png)


def plot_improvement_histogram(test_results: Path, png: Path, column: str = "si-snr_i") -> Path:
    """Distribution of the per-utterance improvement over the test set."""
    values = pd.read_csv(test_results)[column]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(values, bins=30, color="tab:blue", alpha=0.8)
    ax.axvline(values.mean(), color="black", linestyle="--", label=f"mean {values.mean():.2f} dB")
    label = LABELS.get(column, column)
    ax.set(xlabel=f"{label} (dB)", ylabel="test mixtures", title=f"Per-utterance {label} on the test set")
    ax.legend()
    return _save(fig, png)


def _save(fig, png: Path) -> Path:
    """Write a figure whole (`speechsep.output_files`), replacing an earlier one."""
    fig.tight_layout()
    try:
        write_file(png, lambda path: fig.savefig(path, dpi=100), overwrite=True)
    finally:
        plt.close(fig)
    return png


def improvement_by_gender_pairing(test_results: Path, speakers_csv: Path, column: str = "si-snr_i") -> dict:
    """Mean and count of `column` over test mixtures whose talkers all share one voice gender, and over
    the others. Needs a synthetic corpus's `sources/speakers.csv` (speaker_id, gender) and its mixture
    IDs (`<speaker>_<utterance>_<speaker>_<utterance>...`). Same-gender mixtures are the hard ones:
    the pitch ranges of the talkers overlap.
    """
    gender = pd.read_csv(speakers_csv).set_index("speaker_id")["gender"]
    results = pd.read_csv(test_results)
    same_gender = results["snt_id"].map(lambda snt_id: gender[snt_id.split("_")[::2]].nunique() == 1)
    return {
        name: {"mean": float(results.loc[mask, column].mean()), "count": int(mask.sum())}
        for name, mask in (("same_gender", same_gender), ("different_genders", ~same_gender))
    }


def make_figures(run_dir: Path) -> list[Path]:
    """Write learning_curve.png and si-snr_i_histogram.png into a run's output folder."""
    run_dir = Path(run_dir)
    return [
        plot_learning_curve(run_dir / "train_log.txt", run_dir / "learning_curve.png"),
        plot_improvement_histogram(run_dir / "test_results.csv", run_dir / "si-snr_i_histogram.png"),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a training output folder")
    for path in make_figures(parser.parse_args().run_dir):
        print(path)
