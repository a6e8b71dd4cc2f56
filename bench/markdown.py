"""The markdown of the benchmark reports: a section is a heading, a paragraph saying what was measured, and a table."""

import json
from collections.abc import Iterable
from pathlib import Path


def section(title: str, intro: str, header: str, rows: Iterable[str], right_aligned: int = 0) -> str:
    """The `title` heading, the `intro` paragraph, a table and a blank line.

    `header` holds the table's column names separated by " | ", and each row is already written as "| a | b |";
    the last `right_aligned` columns are right-aligned.
    """
    columns = header.count("|") + 1
    rule = "|---" * (columns - right_aligned) + "|---:" * right_aligned + "|"
    return "\n".join([title, "", intro, "", f"| {header} |", rule, *rows, ""])


def run_score_row(name: str, folder: Path) -> str:
    """ "| name | SI-SNRi (95% CI) | SDRi | count |" from a run's test_results_summary.json (or that it has none)."""
    summary = Path(folder) / "test_results_summary.json"
    if not summary.is_file():
        return f"| {name} | not run (no {summary}) | | |"
    scores = json.loads(summary.read_text())
    si_snr_i = scores["si-snr_i"]
    return (
        f"| {name} | {si_snr_i['mean']:.2f} ({si_snr_i['ci95_low']:.2f}..{si_snr_i['ci95_high']:.2f}) "
        f"| {scores['sdr_i']['mean']:.2f} | {si_snr_i['count']} |"
    )
