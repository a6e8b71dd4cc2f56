"""The markdown of the benchmark reports: a section is a heading, a paragraph saying what was measured, and a table."""

from collections.abc import Iterable


def section(title: str, intro: str, header: str, rows: Iterable[str], right_aligned: int = 0) -> str:
    """The `title` heading, the `intro` paragraph, a table and a blank line.

    `header` holds the table's column names separated by " | ", and each row is already written as "| a | b |";
    the last `right_aligned` columns are right-aligned.
    """
    columns = header.count("|") + 1
    rule = "|---" * (columns - right_aligned) + "|---:" * right_aligned + "|"
    return "\n".join([title, "", intro, "", f"| {header} |", rule, *rows, ""])
