"""`scout data`: where datasets and traces come from (placeholder until the data root lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Adds `scout data` (filled in by the data-root work)."""
    del app, bench
