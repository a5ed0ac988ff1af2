"""`scout bench shaping`: goodput through real tc shaping at fixed rates, per destination and during a trace replay.

The measurement is `scout_cli.benchmarks.shaping`; it runs in network namespaces through the test harness
(`scout_testbed.netlab`, installed with ``pip install -e libs/testbed``), so it needs root, as tests/netns do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scout_cli.console import console, fail, parse_floats, say


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Adds `scout bench shaping`."""
    del app

    @bench.command("shaping")
    def bench_shaping(
        rates: Annotated[str, typer.Option(help="fixed rates in Mbit/s, comma-separated")] = "10,50,100",
        repeats: Annotated[int, typer.Option(help="repetitions of every scenario")] = 3,
        seconds: Annotated[float, typer.Option(help="length of each flow (the first 0.5 s is warm-up)")] = 3.0,
        split_rate: Annotated[float, typer.Option(help="rate of the per-destination scenario, Mbit/s")] = 10.0,
        trace: Annotated[
            str, typer.Option(help="trace to replay (name, file)")
        ] = "lumos5g_vzw_mmwave5g_dl_driving_trace103",
        trace_scale: Annotated[float, typer.Option(help="multiply the trace's rates by this")] = 0.1,
        speed: Annotated[float, typer.Option(help="replay speed-up (trace seconds per second)")] = 5.0,
        out: Annotated[Path, typer.Option(help="output folder")] = Path("reports/bench_shaping"),
    ) -> None:
        """Goodput through real tc shaping: medians vs the configured rate and the header-overhead bound
        (JSON + Markdown + PNG). Needs root and network namespaces."""
        try:
            from scout_cli.benchmarks.shaping import ShapingBenchConfig, ShapingBenchError, run_shaping_bench
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("scout_testbed"):
                fail("scout bench shaping runs on the test harness: pip install -e libs/testbed")
            raise
        cfg = ShapingBenchConfig(
            rates_mbit=parse_floats(rates, "--rates"),
            repeats=repeats,
            seconds=seconds,
            split_rate_mbit=split_rate,
            trace=trace,
            trace_scale=trace_scale,
            speed=speed,
            out=out,
        )
        try:
            run_shaping_bench(cfg, progress=lambda m: say(f"  {m}"))
        except ShapingBenchError as e:
            fail(f"scout bench shaping: {e}")
        console.print(f"[green]written[/green] {out}/README.md, results.json, shaping_bench.png")
