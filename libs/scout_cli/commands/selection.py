"""`scout bench selection`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scout_cli.console import console


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @bench.command("selection")
    def bench_selection(
        models: Annotated[str, typer.Option(help="comma-separated model names")] = "smollm2-135m,qwen2.5-coder-0.5b",
        lengths: Annotated[str, typer.Option(help="comma-separated context lengths")] = "256,1024,4096,8192",
        memory_budget_gib: Annotated[float, typer.Option(help="skip eager Q2C above this estimate")] = 8.0,
        repeats: Annotated[int, typer.Option(help="timing repeats for contexts up to 1K")] = 3,
        out: Annotated[Path, typer.Option(help="output folder")] = Path("reports/bench_selection"),
        methods: Annotated[
            str | None, typer.Option(help="only these method labels, e.g. 'q2c (hook),q2c (eager)'")
        ] = None,
    ) -> None:
        """Scoring time and peak memory per selector at several context lengths (JSON + Markdown + PNG)."""
        from scout_cli.benchmarks.selection import SelectionBenchConfig, run_selection_bench

        cfg = SelectionBenchConfig(
            models=[m for m in models.split(",") if m],
            lengths=[int(x) for x in lengths.split(",") if x],
            memory_budget_gib=memory_budget_gib,
            repeats=repeats,
            out=out,
            methods=[m.strip() for m in methods.split(",")] if methods else None,
        )
        run_selection_bench(cfg, progress=lambda m: console.print(f"  {m}"))
        console.print(f"[green]written[/green] {out}/README.md, results.json, selection_bench.png")
