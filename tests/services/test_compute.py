"""The one compute wrapper of the roles (`scout_services.compute.Compute`): one computation at a time, off the event
loop, the library's input errors typed, a span per stage the library timed."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from scout_runtime.errors import BadRequest, BlobCorrupt, ErrorCode, ScoutError
from scout_runtime.settings import Settings
from scout_runtime.telemetry import setup_telemetry
from scout_services.common import Role
from scout_services.compute import Compute


@dataclass
class Timed:
    timings: dict[str, float] = field(default_factory=dict)


def _role() -> tuple[Role, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry("cloud_decoder", settings=Settings(), span_exporter=exporter)
    return Role.create("cloud_decoder", Settings(), telemetry=telemetry, registry=CollectorRegistry()), exporter


async def test_runs_off_the_loop_one_at_a_time() -> None:
    role, _ = _role()
    compute = Compute(role)
    loop_thread = threading.get_ident()
    active, peak, threads = 0, 0, set()
    guard = threading.Lock()

    def work(x: int) -> int:
        nonlocal active, peak
        with guard:
            active += 1
            peak = max(peak, active)
            threads.add(threading.get_ident())
        threading.Event().wait(0.02)
        with guard:
            active -= 1
        return x * 2

    results = await asyncio.gather(*(compute.run(f"r{i}", work, i) for i in range(4)))
    assert results == [0, 2, 4, 6]
    assert peak == 1
    assert loop_thread not in threads


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ValueError("bad retention"), ErrorCode.BAD_REQUEST),
        (IndexError("position 9 of 4"), ErrorCode.BAD_REQUEST),
        (KeyError("no selector 'telepathy'"), ErrorCode.BAD_REQUEST),
    ],
)
async def test_input_errors_become_typed_errors(error: Exception, code: ErrorCode) -> None:
    role, _ = _role()

    def fail() -> None:
        raise error

    with pytest.raises(ScoutError) as info:
        await Compute(role).run("req-1", fail)
    assert info.value.code == code and info.value.request_id == "req-1"
    assert isinstance(info.value, BadRequest)


async def test_a_corrupt_blob_is_blob_corrupt_and_a_bug_stays_a_bug() -> None:
    from scout.codec.wire import BlobError

    role, _ = _role()
    compute = Compute(role)

    def corrupt() -> None:
        raise BlobError("checksum mismatch")

    def bug() -> None:
        raise RuntimeError("a bug, not the request's fault")

    with pytest.raises(BlobCorrupt):
        await compute.run("req-2", corrupt)
    with pytest.raises(RuntimeError, match="a bug"):
        await compute.run("req-3", bug)
    assert not compute.lock.locked()


async def test_one_span_per_timed_stage_end_to_end() -> None:
    role, exporter = _role()
    await Compute(role).run("req-4", lambda: Timed({"decode": 0.25, "generate": 0.5}))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"decode", "generate"}
    decode, generate = spans["decode"], spans["generate"]
    assert decode.end_time - decode.start_time == 250_000_000
    assert generate.start_time == decode.end_time and generate.end_time - generate.start_time == 500_000_000
    assert decode.attributes is not None
    assert decode.attributes["scout.role"] == "cloud_decoder" and decode.attributes["scout.request_id"] == "req-4"


async def test_no_spans_when_the_role_makes_its_own() -> None:
    role, exporter = _role()
    assert await Compute(role, spans=False).run("req-5", lambda: Timed({"encode": 0.1})) == Timed({"encode": 0.1})
    assert exporter.get_finished_spans() == ()
