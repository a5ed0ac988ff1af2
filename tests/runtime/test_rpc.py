"""serve/call over both buses: every request gets exactly one reply, hostile input gets typed errors, the service
keeps serving, per-device in-flight limits hold, and traces and metrics follow the request."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from runtime_helpers import BusFactory

from scout_runtime.bus import Msg
from scout_runtime.errors import (
    BadRequest,
    BlobMissing,
    ErrorCode,
    InternalError,
    Overloaded,
    ScoutError,
    TooLarge,
    UnsupportedVersion,
)
from scout_runtime.limits import InflightLimiter, Limits
from scout_runtime.messages import ErrorReply, Plan, PlanRequest, parse, parse_reply
from scout_runtime.metrics import ServiceMetrics
from scout_runtime.rpc import call, serve
from scout_runtime.settings import Settings
from scout_runtime.telemetry import setup_telemetry, start_span

LIMITS = Limits(max_message_bytes=4096, max_context_tokens=10_000)


def _request(**changes: object) -> PlanRequest:
    base = {"request_id": "r1", "device_id": "car-7", "context_tokens": 1024, "deadline_ms": 2000}
    return PlanRequest.model_validate({**base, **changes})


async def plan_handler(request: PlanRequest, msg: Msg) -> Plan:
    if request.model_pair == "missing-blob":
        raise BlobMissing("staged blob expired", request_id=request.request_id)
    if request.model_pair == "bug":
        raise RuntimeError("secret internal detail")
    mode = "scout" if request.context_tokens > 2048 else "int8"
    return Plan(request_id=request.request_id, mode=mode, expected_bytes=request.context_tokens * 4)


async def test_serve_and_call(make_bus: BusFactory, ns: str) -> None:
    server, client = await make_bus("policy"), await make_bus("selector")
    await serve(server, f"{ns}.plan", PlanRequest, plan_handler, queue="policy", limits=LIMITS)
    plan = await call(client, f"{ns}.plan", _request(), Plan, timeout_s=5)
    assert plan.mode == "int8" and plan.expected_bytes == 4096 and plan.request_id == "r1"
    big = await call(client, f"{ns}.plan", _request(request_id="r2", context_tokens=4096), Plan, timeout_s=5)
    assert big.mode == "scout"


async def test_handler_errors_are_typed_and_internals_do_not_leak(
    make_bus: BusFactory, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    server, client = await make_bus("policy"), await make_bus("selector")
    await serve(server, f"{ns}.plan", PlanRequest, plan_handler, limits=LIMITS)
    with pytest.raises(BlobMissing) as missing:
        await call(client, f"{ns}.plan", _request(request_id="r7", model_pair="missing-blob"), Plan, timeout_s=5)
    assert missing.value.request_id == "r7" and "expired" in missing.value.message
    with pytest.raises(InternalError) as internal:
        await call(client, f"{ns}.plan", _request(request_id="r8", model_pair="bug"), Plan, timeout_s=5)
    assert internal.value.message == "internal error" and internal.value.request_id == "r8"
    assert "secret internal detail" in caplog.text  # logged for operators, never sent to the client


def _hostile_corpus() -> list[tuple[bytes, type[ScoutError]]]:
    rng = random.Random(1234)
    good = json.loads(_request().to_bytes())
    corpus: list[tuple[bytes, type[ScoutError]]] = [(rng.randbytes(rng.randint(0, 300)), BadRequest) for _ in range(40)]
    corpus += [
        (b"", BadRequest),
        (b"[" * 4000, BadRequest),
        (b"null", BadRequest),
        (json.dumps({**good, "schema_version": 2}).encode(), UnsupportedVersion),
        (json.dumps({**good, "schema_version": "1"}).encode(), UnsupportedVersion),
        (json.dumps({k: v for k, v in good.items() if k != "schema_version"}).encode(), UnsupportedVersion),
        (json.dumps({**good, "type": "ask"}).encode(), BadRequest),
        (json.dumps({**good, "device_id": "../../etc"}).encode(), BadRequest),
        (json.dumps({**good, "context_tokens": 10_001}).encode(), BadRequest),
        (json.dumps({**good, "deadline_ms": -1}).encode(), BadRequest),
        (json.dumps({**good, "elapsed_ms": "NaN"}).encode(), BadRequest),
        (json.dumps({**good, "sudo": True}).encode(), BadRequest),
        (json.dumps({**good, "request_id": "x" * 5000}).encode(), TooLarge),
        (b"{" + b" " * 5000 + b"}", TooLarge),
    ]
    for key in good:  # every field replaced by a wrong type
        expected = UnsupportedVersion if key == "schema_version" else BadRequest
        corpus.append((json.dumps({**good, key: {"nested": [1, 2]}}).encode(), expected))
    return corpus


async def test_hostile_inputs_get_typed_replies_and_the_service_keeps_serving(make_bus: BusFactory, ns: str) -> None:
    server, client = await make_bus("policy"), await make_bus("attacker")
    metrics = ServiceMetrics("transport_policy")
    await serve(server, f"{ns}.plan", PlanRequest, plan_handler, limits=LIMITS, metrics=metrics)
    corpus = _hostile_corpus()
    for data, expected in corpus:
        reply = await client.request(f"{ns}.plan", data, timeout_s=5)
        error = parse(ErrorReply, reply.data)
        assert error.code == expected.code, (data[:80], error)
        with pytest.raises(expected):
            parse_reply(Plan, reply.data)
    # A request id is echoed back when it can be read, so the client can correlate the failure.
    bad = json.dumps({**json.loads(_request(request_id="corr-1").to_bytes()), "deadline_ms": 0}).encode()
    assert parse(ErrorReply, (await client.request(f"{ns}.plan", bad, timeout_s=5)).data).request_id == "corr-1"
    # Still serving.
    assert (await call(client, f"{ns}.plan", _request(), Plan, timeout_s=5)).mode == "int8"
    errors = sum(
        metrics.registry.get_sample_value("scout_errors_total", {"role": "transport_policy", "op": "plan_request",
                                                                 "code": code.value}) or 0
        for code in ErrorCode
    )  # fmt: skip
    assert errors == len(corpus) + 1


async def _until(cond: Callable[[], bool], tasks: list[asyncio.Task[Plan]], timeout_s: float = 20.0) -> None:
    """Wait (bounded) for ``cond``; a request task that already failed is re-raised rather than waited on forever."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.005)


async def test_per_device_inflight_limit(make_bus: BusFactory, ns: str) -> None:
    server, client = await make_bus("policy"), await make_bus("selector")
    release = asyncio.Event()
    entered = 0

    async def slow(request: PlanRequest, msg: Msg) -> Plan:
        nonlocal entered
        entered += 1
        await release.wait()
        return Plan(request_id=request.request_id, mode="text", expected_bytes=0)

    await serve(server, f"{ns}.plan", PlanRequest, slow, concurrency=8, inflight=InflightLimiter(2))
    first = [asyncio.create_task(call(client, f"{ns}.plan", _request(request_id=f"a{i}"), Plan)) for i in range(2)]
    await _until(lambda: entered >= 2, first)
    with pytest.raises(Overloaded):
        await call(client, f"{ns}.plan", _request(request_id="a3"), Plan, timeout_s=5)
    other = asyncio.create_task(call(client, f"{ns}.plan", _request(request_id="b1", device_id="bike-1"), Plan))
    await _until(lambda: entered >= 3, [*first, other])
    release.set()
    assert [p.request_id for p in await asyncio.gather(*first, other)] == ["a0", "a1", "b1"]
    # Slots are released: the device may send again.
    assert (await call(client, f"{ns}.plan", _request(request_id="a4"), Plan, timeout_s=5)).request_id == "a4"


async def test_serve_traces_as_a_child_of_the_caller(
    make_bus: BusFactory, ns: str, env_clean: pytest.MonkeyPatch
) -> None:
    selector_spans, policy_spans = InMemorySpanExporter(), InMemorySpanExporter()
    selector = setup_telemetry("selector", settings=Settings(), span_exporter=selector_spans)
    policy = setup_telemetry("transport_policy", settings=Settings(), span_exporter=policy_spans)
    server, client = await make_bus("policy"), await make_bus("selector")
    await serve(server, f"{ns}.plan", PlanRequest, plan_handler, tracer=policy.tracer)
    with start_span(selector.tracer, "plan"):
        await call(client, f"{ns}.plan", _request(request_id="tr1"), Plan, timeout_s=5)
    (caller,) = selector_spans.get_finished_spans()
    (handled,) = policy_spans.get_finished_spans()
    assert handled.name == "plan_request handle" and handled.attributes["scout.request_id"] == "tr1"
    assert handled.parent is not None and handled.parent.span_id == caller.context.span_id
    assert handled.context.trace_id == caller.context.trace_id
