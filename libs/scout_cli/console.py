"""The console every `scout` command prints through: one error path, one number-list parser, and tables that
survive pipes.

Why a module of its own: rich sizes a table to 80 columns when stdout is not a terminal and cuts cells with an
ellipsis, so `scout models list | cat` or a CI log showed `smollm…`. Here a table on a terminal folds long cells
instead of cutting them, and anywhere else it prints as plain aligned lines with every identifier whole. Messages
are escaped before rich sees them, so `pip install -e '.[qwen-edge]'` prints as written.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(soft_wrap=True)  # long paths and hints stay on one line in logs (tables: print_table)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, *, code: int = 2) -> NoReturn:
    """One line on stderr (the message escaped, never interpreted as markup) and a non-zero exit."""
    err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def say(message: str, *, out: Console | None = None) -> None:
    """Print plain text that may contain square brackets (install hints, extras) without rich eating them."""
    (out or console).print(escape(message), soft_wrap=True)


def parse_floats(text: str, what: str) -> list[float]:
    """``"0.25,0.5"`` -> ``[0.25, 0.5]``; a bad or empty list is a clear error naming the option."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{what}: expected comma-separated numbers, got {text!r}")
    if not values:
        fail(f"{what}: empty list")
    return values


def _plain_cell(value: object) -> str:
    text = value.plain if hasattr(value, "plain") else str(value)
    return " ".join(text.split())


def print_table(table: Table, *, out: Console | None = None) -> None:
    """A table on a terminal (long cells fold, never cut); plain aligned lines when output is piped or logged."""
    out = out or console
    if out.is_terminal:
        for column in table.columns:
            column.overflow = "fold"
        out.print(table)
        return
    headers = [_plain_cell(c.header) for c in table.columns]
    columns = [[_plain_cell(cell) for cell in c._cells] for c in table.columns]
    rows = [list(r) for r in zip(*columns, strict=True)] if columns else []
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    if table.title:
        print(_plain_cell(table.title), file=out.file)
    for line in (headers, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip(), file=out.file)
