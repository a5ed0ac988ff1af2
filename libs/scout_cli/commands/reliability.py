"""`scout bench reliability` and `scout bench soak`: load, faults and hostile input against the real multi-process
deployment (issue 10).

Both start their own nats-server and redis-server (authentication on, free loopback ports) and every role as its
own process, so they need the two server binaries on PATH and nothing else. The work is in `scout_testbed.reliability`:
the test harness, a distribution of its own (``pip install -e ./libs/testbed``) that the image does not have; it is
imported inside the command, so `scout --help` never loads it.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from scout_cli.benchmarks.common import needs_harness
from scout_cli.console import console

# The options both commands take (one definition, so the two never drift apart).
ConcurrencyOpt = Annotated[list[int] | None, typer.Option(help="soak load levels (repeatable); default 1, 8, 32")]
RequestsOpt = Annotated[
    list[int] | None, typer.Option(help="requests per client, one value or one per level; default 16, 4, 3")
]
ModelOpt = Annotated[str, typer.Option(help="model of every role")]
DtypeOpt = Annotated[str, typer.Option(help="compute dtype")]
MaxNewTokensOpt = Annotated[int, typer.Option(help="tokens generated per request")]
DocumentsOpt = Annotated[int, typer.Option(help="SQuAD v2 prompts in the mix")]


def _levels(concurrency: list[int], requests: list[int]) -> list[tuple[int, int]]:
    """(clients, requests per client) per level; one ``--requests`` value applies to every level."""
    if len(requests) == 1:
        requests = requests * len(concurrency)
    if len(requests) != len(concurrency):
        raise typer.BadParameter("give one --requests, or one per --concurrency")
    if any(c < 1 for c in concurrency) or any(r < 1 for r in requests):
        raise typer.BadParameter("--concurrency and --requests must be >= 1")
    return list(zip(concurrency, requests, strict=True))


def _run(
    command: str,
    out: Path,
    concurrency: list[int] | None,
    requests: list[int] | None,
    model: str,
    dtype: str,
    max_new_tokens: int,
    documents: int,
    **fields: object,
) -> None:
    """Run `scout_testbed.reliability` with the options both commands share (and ``fields``), print where the
    report went, exit 1 when a criterion was not met."""
    levels = _levels(concurrency or [1, 8, 32], requests or [16, 4, 3])
    try:
        from scout_testbed.reliability import ReliabilityConfig, run_reliability
    except ModuleNotFoundError as e:
        needs_harness(e, command)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("scout_runtime.bus").setLevel(logging.ERROR)  # reconnect notices during the NATS fault
    cfg = ReliabilityConfig(
        out=out, levels=levels, model=model, dtype=dtype, max_new_tokens=max_new_tokens, documents=documents, **fields
    )
    results = run_reliability(cfg, progress=lambda m: console.print(f"  {m}", soft_wrap=True))
    console.print(f"[green]written[/green] {out.parent / (out.name + '.md')}, {out}/results.json, {out}/latency.png")
    if not results["verdict"]["ok"]:
        console.print(f"[red]not every criterion was met:[/red] {results['verdict']}")
        raise typer.Exit(1)


def _command(label: str, out_default: str, doc: str, *, hostile: bool) -> Callable[..., None]:
    """One command of the two: the options they share, plus ``--hostile-random`` where hostile input is sent.

    Typer reads a command's options from its signature, so the shared ones are written once here and the soak's
    signature is this one without ``hostile_random`` (evaluated, since typer takes a given signature as it is)."""

    def command(
        out: Annotated[Path, typer.Option(help="output folder (the Markdown goes next to it)")] = Path(out_default),
        concurrency: ConcurrencyOpt = None,
        requests: RequestsOpt = None,
        model: ModelOpt = "smollm2-135m",
        dtype: DtypeOpt = "fp32",
        max_new_tokens: MaxNewTokensOpt = 6,
        documents: DocumentsOpt = 16,
        hostile_random: Annotated[int, typer.Option(help="random-byte inputs per entry point")] = 16,
    ) -> None:
        shared = (out, concurrency, requests, model, dtype, max_new_tokens, documents)
        if hostile:
            _run(label, *shared, hostile_random=hostile_random)
        else:
            _run(label, *shared, faults=(), hostile=False)

    command.__doc__ = doc
    if not hostile:
        signature = inspect.signature(command, eval_str=True)
        params = [p for name, p in signature.parameters.items() if name != "hostile_random"]
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return command


def register(app: typer.Typer, bench: typer.Typer) -> None:
    del app
    bench.command("reliability")(
        _command(
            "scout bench reliability",
            "reports/reliability",
            """Soak at each load level (sent / answered / typed errors / lost / duplicated, p50/p99), every fault
        (link to zero, Redis and NATS restarts, kill -9 of a decoder) and hostile input on every entry point,
        against its own authenticated NATS + Redis and role processes; JSON + Markdown + PNG.""",
            hostile=True,
        )
    )
    bench.command("soak")(
        _command(
            "scout bench soak",
            "reports/reliability/soak",
            """Only the soak: a bounded mix of modes and real prompts at each load level; lost and duplicated requests
        counted at the clients and on the result subjects; JSON + Markdown + PNG.""",
            hostile=False,
        )
    )
