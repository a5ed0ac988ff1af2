"""`scout demo`: the four service roles, embedded in one process, answering one real question several ways.

What runs: the transport policy, the quantizer, the cloud decoder and the selector, started in this process exactly
as the embedded-default test starts them (tests/services/test_embedded.py): the same service classes as
``scout serve ROLE``, on the in-process bus (``inproc://``) and in-memory stores (``memory://``). The demo is then a
plain client of ``scout.v1.ask`` (`scout_services.client.ask`), as ``scout ask`` is. Nothing needs a server.

The uplink is simulated, not skipped: the edge roles (quantizer, selector) see the cloud store as
``memory://cloud-<ns>?rate_mbit=R`` (`scout_runtime.store.PacedUplink`), so every KV blob the quantizer uploads and
every document the selector stages crosses a link paced at R Mbit/s, and the times the roles measure and report are
real seconds at that rate. The cloud decoder opens the same store without the rate: its reads are the cloud's own.
Why the store and not a pacing step in the demo: the roles' code stays exactly what runs in a deployment, where the
pod's shaped interface paces the same upload. The policy learns the rate as it does in a pod: one `LinkState`
(``source="shaper"``, the configured rate) on ``scout.v1.link.<device>`` before the first ask, which the quantizer's
measured goodput then refines.

The asks, for one SQuAD v2 example (or ``--question/--context``): the policy's own choice first (while its estimate
is exactly the configured rate), then forced ``full``, ``int4`` and ``scout``, and last ``local`` (the edge model
alone, nothing sent). One model instance serves edge and cloud (the same-model pair; with ``full`` the cloud
answers from the edge's own cache, so its answer is the edge's).

This module sits on the top floor (the CLI): it imports the roles and the runtime directly. `scout_cli.main` imports
it only inside the ``demo`` command, so `scout --help` loads none of it.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from scout_runtime.bus import connect_bus
from scout_runtime.errors import ScoutError
from scout_runtime.messages import LinkState
from scout_runtime.settings import Settings
from scout_services.client import ask, new_request
from scout_services.cloud_decoder.args import DecoderArgs
from scout_services.cloud_decoder.main import CloudDecoderService
from scout_services.quantizer.main import QuantizerService
from scout_services.selector.args import SelectorArgs
from scout_services.selector.main import SelectorService
from scout_services.transport_policy.args import PolicyArgs
from scout_services.transport_policy.main import TransportPolicyService

DEVICE_ID = "demo"
DEFAULT_MODES: tuple[str, ...] = ("full", "int4", "scout")
"""Modes the demo forces after the policy's own choice (and before ``local``)."""
FORCIBLE = ("full", "int8", "int4", "mixed", "scout", "text")
ASK_TIMEOUT_S = 600.0
"""Generous: a forced ``full`` at a very low ``--rate`` legitimately takes minutes."""


@dataclass
class DemoAsk:
    """One ask of the demo and what its `AskReply` said."""

    label: str
    """``auto`` (the policy chose), a forced mode, or ``local``."""
    mode: str
    retention: float
    bytes_sent: int
    upload_s: float | None
    """The upload as the role measured it (the quantizer's blob or the selector's document); None if nothing went up."""
    total_s: float
    """End to end, as this client measured it (ask sent to reply received)."""
    answer: str
    answered_by: str
    reason: str
    """The plan's reason text."""
    planned_rate_bps: float | None
    """The uplink rate the policy planned with."""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class DemoResult:
    question: str
    context: str
    answer: str
    """The answer of the policy's own choice."""
    local_answer: str
    """The edge model's answer without the cloud (mode ``local``)."""
    gold: list[str]
    rate_mbit: float
    deadline_ms: int
    asks: list[DemoAsk]
    timings: dict[str, float]
    """Setup: model load, roles start."""

    def ask(self, label: str) -> DemoAsk:
        """The ask labelled ``label`` (``auto``, a mode, or ``local``)."""
        for a in self.asks:
            if a.label == label:
                return a
        raise KeyError(label)


def run_demo(
    console: Console,
    *,
    model: str = "smollm2-135m",
    rate_mbit: float = 100.0,
    example: int = 5,
    question: str | None = None,
    context: str | None = None,
    max_new_tokens: int = 24,
    device: str | None = None,
    dtype: str = "auto",
    deadline_ms: int = 10_000,
    modes: Sequence[str] = DEFAULT_MODES,
    lm: Any = None,
) -> DemoResult:
    """Run the demo (see the module docstring) and print its table on ``console``.

    ``lm``: an already loaded model to serve both ends (tests share one; ``model`` must then name it, since the
    policy sizes transfers from that model's spec); otherwise ``model`` is loaded in ``dtype`` (``auto``: bf16 where
    the hardware computes in it, else fp32).
    Raises ValueError for bad arguments and RuntimeError when an ask fails.
    """
    from scout.datasets import load_examples
    from scout.prompts import build_prompt

    if (question is None) != (context is None):
        raise ValueError("give both --question and --context, or neither (then a SQuAD v2 example is used)")
    if not (math.isfinite(rate_mbit) and 0 < rate_mbit <= 1e7):
        raise ValueError(f"--rate must be a positive number of Mbit/s (at most 1e7), got {rate_mbit}")
    unknown = [m for m in modes if m not in FORCIBLE]
    if unknown:
        raise ValueError(f"modes must be among {', '.join(FORCIBLE)}; got {unknown}")
    gold: list[str] = []
    if question is None or context is None:
        if example < 0:
            raise ValueError(f"--example must be >= 0, got {example}")
        examples = load_examples("squad_v2", n=example + 1, seed=0, answerable_only=True, max_context_chars=1200)
        if example >= len(examples):
            raise ValueError(f"--example {example}: the sample holds {len(examples)} examples")
        ex = examples[example]
        question, context, gold = ex.question, ex.context, list(dict.fromkeys(ex.answers))

    setup: dict[str, float] = {}
    if lm is None:
        from scout.inference import warmup
        from scout.models import load_model, preferred_dtype

        if dtype == "auto":
            # bf16 only where the hardware computes in it: on an AVX2-only CPU a bf16 prefill is ~5x slower.
            dtype = preferred_dtype(device)
        with console.status(f"loading {model} ({dtype}) …"):
            t0 = time.perf_counter()
            lm = load_model(model, dtype=dtype, device=device)
            warmup(lm)
            setup["load model"] = time.perf_counter() - t0
    prompt = build_prompt(lm.tokenizer, question=question, context=context)
    console.print(f"[bold]question[/bold] {escape(question)}")
    console.print(
        f"[bold]context[/bold]  {len(prompt.context)} tokens of {len(prompt.input_ids)} ({lm.spec.name}, {lm.device})"
    )
    labels = ["auto", *modes, "local"]
    asks, setup["start roles"] = asyncio.run(
        _run_roles(
            console,
            lm,
            model=model,
            rate_mbit=rate_mbit,
            question=question,
            document=context,
            deadline_ms=deadline_ms,
            max_new_tokens=max_new_tokens,
            labels=labels,
        )
    )
    result = DemoResult(
        question=question,
        context=context,
        answer=asks[0].answer,
        local_answer=asks[-1].answer,
        gold=gold,
        rate_mbit=rate_mbit,
        deadline_ms=deadline_ms,
        asks=asks,
        timings=setup,
    )
    _print(console, result)
    return result


async def _run_roles(
    console: Console,
    lm: Any,
    *,
    model: str,
    rate_mbit: float,
    question: str,
    document: str,
    deadline_ms: int,
    max_new_tokens: int,
    labels: Sequence[str],
) -> tuple[list[DemoAsk], float]:
    """Start the four roles, tell the policy the link rate, send the asks in order, stop the roles."""
    ns = "demo" + uuid.uuid4().hex[:10]
    common = {
        "namespace": ns,
        "nats_url": f"inproc://{ns}",
        "edge_store_url": f"memory://edge-{ns}",
        "cloud_store_url": f"memory://cloud-{ns}",
        "http_host": "127.0.0.1",
    }
    cloud_side = Settings(**common)
    # The edge roles' path into the cloud store crosses the uplink: same store, paced writes.
    edge_side = Settings(**{**common, "cloud_store_url": f"memory://cloud-{ns}?rate_mbit={rate_mbit!r}"})
    policy = TransportPolicyService(cloud_side, PolicyArgs(edge_model=model), health_port=0)
    services: list[Any] = [
        policy,
        QuantizerService(edge_side, health_port=0),
        CloudDecoderService(
            cloud_side,
            DecoderArgs(model=model, warmup=False),
            model=lm,
            health_port=0,
        ),
        SelectorService(
            edge_side,
            SelectorArgs(model=model, warmup=False, device_id=None),
            model=lm,
            health_port=0,
            http_port=0,
        ),
    ]
    started: list[Any] = []
    asks: list[DemoAsk] = []
    try:
        t0 = time.perf_counter()
        with console.status("starting transport_policy, quantizer, cloud_decoder, selector (in-process) …"):
            for service in services:
                await service.start()
                started.append(service)
            await _announce_link(cloud_side, policy, rate_mbit * 1e6)
        start_s = time.perf_counter() - t0
        for label in labels:
            with console.status(f"ask ({label}) …"):
                result = await _ask_once(edge_side, label, question, document, deadline_ms, max_new_tokens)
            asks.append(result)
    finally:
        for service in reversed(started):
            await service.stop()
    return asks, start_s


async def _announce_link(settings: Settings, policy: TransportPolicyService, rate_bps: float) -> None:
    """Publish the configured rate as the shaper would, and wait until the policy holds it (control messages are
    at-most-once and asynchronous: the first plan must not race it)."""
    assert policy.handlers is not None, "the policy has started"
    bus = await connect_bus(settings, name="demo-shaper")
    try:
        state = LinkState(device_id=DEVICE_ID, rate_bps=rate_bps, source="shaper", at=time.time())
        await bus.publish(settings.subjects().link(DEVICE_ID), state.to_bytes())
        deadline = time.monotonic() + 5.0
        while policy.handlers.links.bandwidth_bps(DEVICE_ID) != rate_bps:
            if time.monotonic() > deadline:
                raise RuntimeError("the transport policy did not receive the link state")
            await asyncio.sleep(0.01)
    finally:
        await bus.close()


async def _ask_once(
    settings: Settings,
    label: str,
    question: str,
    document: str,
    deadline_ms: int,
    max_new_tokens: int,
) -> DemoAsk:
    """One ask through `scout_services.client.ask`; a typed error becomes a RuntimeError naming the ask."""
    mode = None if label == "auto" else label
    request = new_request(
        question, document, device_id=DEVICE_ID, deadline_ms=deadline_ms, max_new_tokens=max_new_tokens, mode=mode
    )
    t0 = time.perf_counter()
    try:
        reply = await ask(request, settings=settings, timeout_s=ASK_TIMEOUT_S)
    except ScoutError as e:
        raise RuntimeError(f"ask ({label}) failed: {e.code.value}: {e.message}") from None
    total = time.perf_counter() - t0
    plan = reply.plan
    return DemoAsk(
        label=label,
        mode=reply.mode,
        retention=reply.retention,
        bytes_sent=reply.bytes_sent,
        upload_s=reply.timings.get("upload"),
        total_s=total,
        answer=reply.answer,
        answered_by=reply.answered_by,
        reason=plan.reason if plan is not None else "",
        planned_rate_bps=plan.bandwidth_bps if plan is not None else None,
        timings=dict(reply.timings),
    )


def _print(console: Console, result: DemoResult) -> None:
    """The table, then what the policy chose and why, the answers and the gold answers."""
    table = Table(
        title=f"four roles in-process, uplink paced at {result.rate_mbit:g} Mbit/s, deadline {result.deadline_ms} ms",
        caption="upload: as the uploading role measured it; e2e: ask sent to reply received",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
    )
    table.add_column("ask", no_wrap=True)
    table.add_column("mode", no_wrap=True)
    table.add_column("retention", justify="right", no_wrap=True)
    table.add_column("bytes sent", justify="right", no_wrap=True)
    table.add_column("upload s", justify="right", no_wrap=True)
    table.add_column("e2e s", justify="right", no_wrap=True)
    table.add_column("answer")
    names = {"auto": "policy", "local": "edge only"}
    for a in result.asks:
        table.add_row(
            names.get(a.label, a.label),
            a.mode,
            f"{a.retention:g}",
            f"{a.bytes_sent:,}",
            "—" if a.upload_s is None else f"{a.upload_s:.3f}",
            f"{a.total_s:.2f}",
            Text(a.answer),
        )
    console.print(table)
    auto = result.asks[0]
    rate = "?" if auto.planned_rate_bps is None else f"{auto.planned_rate_bps / 1e6:g} Mbit/s"
    reason = escape(auto.reason) or "(the plan gives no reason)"
    console.print(f"[bold]policy[/bold] chose {auto.mode} at {rate}: {reason}")
    console.print(
        f"[bold green]answer[/bold green] {escape(repr(result.answer))}; "
        f"edge alone: {escape(repr(result.local_answer))}"
    )
    if result.gold:
        console.print(f"gold: {escape(repr(result.gold))}")
    console.print(
        "setup: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()),
        style="dim",
        highlight=False,
    )
