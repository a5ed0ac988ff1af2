"""`scout bench shaping`: goodput through real tc shaping (placeholder until the shaping bench lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Adds `scout bench shaping` (filled in by the shaping-bench work)."""
    del app, bench
