"""`scout serve ROLE`, `scout ask QUESTION --document FILE`, and `scout bench pipeline`.

The CLI is the top floor: it imports the services (`scout_services`) and the runtime with ordinary ``import``
statements, inside the command functions so that `scout --help` never loads NATS, Redis or torch. One container
image runs every role with ``scout serve ROLE``. `scout bench pipeline` is the test harness's (`scout_testbed.bench`,
a distribution of its own that the image does not have).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scout_cli.benchmarks.common import needs_harness
from scout_cli.console import console, fail

ROLES: dict[str, str] = {
    "selector": "selector",
    "quantizer": "quantizer",
    "transport_policy": "transport_policy",
    "transport-policy": "transport_policy",
    "policy": "transport_policy",
    "cloud_decoder": "cloud_decoder",
    "cloud-decoder": "cloud_decoder",
    "decoder": "cloud_decoder",
    "shaper": "shaper",
}
MODES = ("full", "int8", "int4", "mixed", "scout", "text", "local")
ROUTES = ("shared", "device")
"""``scout ask --route``: which selectors may take the ask over NATS (`scout_services.client.ask_subject`)."""


@dataclass(frozen=True)
class Question:
    """What ``scout ask`` asks, the same whether the services or this process (``--embedded``) answer it."""

    question: str
    document: str
    mode: str | None
    retention: float | None
    deadline_ms: int
    max_new_tokens: int


def _quiet_bus() -> None:
    """A client's own disconnect is not news: keep the bus's reconnect warnings out of command output."""
    logging.getLogger("scout_runtime.bus").setLevel(logging.ERROR)


def print_answer(out: Console, fields: dict[str, Any]) -> None:
    """The answer, how it was produced, what crossed the uplink, and the latency breakdown (the model's text is
    escaped: an answer with square brackets is printed as generated, never read as rich markup)."""
    out.print(f"[bold green]answer[/bold green] {escape(fields['answer'])}")
    retention = fields.get("retention", 1.0)
    point = fields["mode"] if retention == 1.0 else f"{fields['mode']}@{retention:g}"
    out.print(
        f"mode {point} (answered by the {fields.get('answered_by', 'cloud')}); bytes sent {fields['bytes_sent']:,}"
    )
    if fields.get("reason"):
        out.print(f"plan: {escape(fields['reason'])}")
    table = Table("stage", "ms", title="latency breakdown")
    for stage, seconds in fields["timings"].items():
        table.add_row(stage, f"{1000 * seconds:.1f}")
    out.print(table)


def role_main(role: str) -> Callable[[], None]:
    """The ``main`` of a role (a canonical name, a value of `ROLES`), imported only when that role is run."""
    if role == "selector":
        from scout_services.selector.main import main
    elif role == "quantizer":
        from scout_services.quantizer.main import main
    elif role == "transport_policy":
        from scout_services.transport_policy.main import main
    elif role == "cloud_decoder":
        from scout_services.cloud_decoder.main import main
    elif role == "shaper":
        from scout_services.shaper.main import main
    else:
        raise ValueError(f"no role {role!r}")
    return main


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("serve")
    def serve_role(
        role: Annotated[str, typer.Argument(help="selector, quantizer, transport_policy, cloud_decoder or shaper")],
    ) -> None:
        """Run one service role as this process (settings from SCOUT_* environment variables; SIGTERM drains)."""
        if role not in ROLES:
            fail(f"unknown role {role!r}; roles: selector, quantizer, transport_policy, cloud_decoder, shaper")
        role_main(ROLES[role])()

    @app.command("ask")
    def ask(
        question: Annotated[str, typer.Argument()],
        document: Annotated[Path, typer.Option("--document", "-d", help="the document (a UTF-8 text file)")],
        mode: Annotated[
            str | None, typer.Option(help=f"force a mode: {', '.join(MODES)} (default: the policy)")
        ] = None,
        retention: Annotated[float | None, typer.Option(help="force a retention in (0, 1]; 1 = no selection")] = None,
        deadline_ms: Annotated[int, typer.Option("--deadline-ms", help="the request's deadline")] = 5000,
        max_new_tokens: Annotated[int, typer.Option()] = 32,
        device_id: Annotated[str, typer.Option(help="this device's id")] = "cli",
        http: Annotated[str | None, typer.Option(help="the selector's HTTP endpoint instead of NATS")] = None,
        route: Annotated[
            str,
            typer.Option(
                help="NATS only: shared (scout.v1.ask, selectors bound to no device) or device "
                "(scout.v1.ask.<device-id>, only the selector bound to --device-id)"
            ),
        ] = "shared",
        timeout_s: Annotated[float, typer.Option(help="give up after this long")] = 120.0,
        embedded: Annotated[
            bool, typer.Option(help="no services: run every role's computation in this process (scout.pipeline)")
        ] = False,
        model: Annotated[str, typer.Option(help="edge and cloud model with --embedded")] = "smollm2-135m",
        bandwidth_mbit: Annotated[
            float, typer.Option("--rate", help="uplink rate the policy assumes, --embedded")
        ] = 100.0,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    ) -> None:
        """Ask the selector (NATS, or HTTP with --http) a question about a document; print the answer, the mode
        chosen, the bytes sent and the latency breakdown. --embedded answers without any service."""
        if mode is not None and mode not in MODES:
            fail(f"--mode must be one of {', '.join(MODES)}")
        if route not in ROUTES:
            fail(f"--route must be one of {', '.join(ROUTES)}")
        try:
            text = document.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            fail(f"cannot read {document}: {e}")
        q = Question(question, text, mode, retention, deadline_ms, max_new_tokens)
        if embedded:
            fields = _ask_embedded(q, model, bandwidth_mbit)
        else:
            fields = _ask_service(q, device_id, http, timeout_s, route)
        if as_json:
            console.print_json(json.dumps(fields))
        else:
            print_answer(console, fields)

    @bench.command("pipeline")
    def bench_pipeline(
        out: Annotated[Path, typer.Option(help="output folder")] = Path("reports/bench_pipeline"),
        model: Annotated[str, typer.Option(help="edge and cloud model")] = "smollm2-135m",
        dtype: Annotated[str, typer.Option(help="compute dtype of both ends")] = "fp32",
        requests: Annotated[int, typer.Option(help="requests per blob size and path")] = 20,
        throughput_requests: Annotated[int, typer.Option(help="decode requests per decoder count")] = 12,
        redis_url: Annotated[str, typer.Option(help="Redis for both stores")] = "redis://127.0.0.1:6379/0",
        nats_url: Annotated[str, typer.Option(help="NATS with JetStream")] = "nats://127.0.0.1:4222",
    ) -> None:
        """Per-request overhead of the NATS+Redis path against the in-process path (p50/p99) for a small and a
        10+ MB blob, and decode requests/s with 1 vs 2 decoders (JSON + Markdown). Needs the test harness."""
        try:
            from scout_testbed.bench import PipelineBenchConfig, run_pipeline_bench
        except ModuleNotFoundError as e:
            needs_harness(e, "scout bench pipeline")

        _quiet_bus()
        cfg = PipelineBenchConfig(
            out=out,
            model=model,
            dtype=dtype,
            requests=requests,
            throughput_requests=throughput_requests,
            redis_url=redis_url,
            nats_url=nats_url,
        )
        run_pipeline_bench(cfg, progress=lambda m: console.print(f"  {m}"))
        console.print(f"[green]written[/green] {out}/README.md and {out}/results.json")


def _ask_service(q: Question, device_id: str, http: str | None, timeout_s: float, route: str) -> dict[str, Any]:
    from scout_services.client import AskFailed, ask_fields

    _quiet_bus()
    try:
        return ask_fields(**asdict(q), device_id=device_id, http_url=http, timeout_s=timeout_s, route=route)
    except AskFailed as e:
        fail(str(e))


def _ask_embedded(q: Question, model: str, bandwidth_mbit: float) -> dict[str, Any]:
    from scout.models import load_model
    from scout.pipeline import answer_inprocess

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    lm = load_model(model)
    try:
        a = answer_inprocess(
            lm,
            lm,
            question=q.question,
            document=q.document,
            mode=q.mode,
            retention=q.retention,
            deadline_s=q.deadline_ms / 1000.0,
            bandwidth_bps=bandwidth_mbit * 1e6,
            max_new_tokens=q.max_new_tokens,
        )
    except ValueError as e:
        fail(str(e))
    return {
        "answer": a.answer,
        "mode": a.mode,
        "retention": a.retention,
        "bytes_sent": a.bytes_sent,
        "answered_by": a.answered_by,
        "timings": a.timings,
        "reason": a.plan.reason,
    }
