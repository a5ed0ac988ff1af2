"""The one Markdown table writer for reports: evaluation, benchmarks (`scout_cli.benchmarks`) and the harness's
reliability and pipeline reports (`scout_testbed`).

Why here: `scout_eval` is the lowest floor that writes reports, and both the harness and the console sit above it,
so one writer serves all three instead of a copy per floor. It imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["markdown_table"]


def _cell(value: Any) -> str:
    """Floats with thousands separators and three decimals; anything else as text, kept on one line, with ``|``
    escaped so a cell (an error message, a fault's outcome) cannot split the row."""
    text = f"{value:,.3f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
