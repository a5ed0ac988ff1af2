"""Tracing: per-role service names, scout attributes, and W3C trace context across the bus, checked with the SDK's
in-memory exporter and with a real OTLP/HTTP receiver (oteltap) receiving spans from two services in one trace."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings
from runtime_helpers import BusFactory, eventually, free_port

from scout_runtime.bus import Bus, Msg, WorkItem, WorkQueueSpec
from scout_runtime.errors import BlobMissing
from scout_runtime.settings import Settings
from scout_runtime.telemetry import Telemetry, extract, inject, otlp_enabled, setup_telemetry, start_span


def _role(role: str) -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return setup_telemetry(role, settings=Settings(), span_exporter=exporter), exporter


def _only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def test_service_name_per_role_and_scout_attributes(env_clean: pytest.MonkeyPatch) -> None:
    env_clean.setenv("OTEL_SERVICE_NAME", "overridden-by-env")
    selector, spans = _role("selector")
    decoder, _ = _role("cloud_decoder")
    with start_span(
        selector.tracer, "encode", request_id="r1", device_id="car-7", mode="int8", retention=0.5, nbytes=1234,
        model="qwen2.5-0.5b", link_rate_bps=1e8, bit_plan="int8",
    ):  # fmt: skip
        pass
    span = _only(spans, "encode")
    assert span.resource.attributes["service.name"] == "scout-selector"
    assert decoder.tracer_provider.resource.attributes["service.name"] == "scout-cloud_decoder"
    assert dict(span.attributes or {}) == {
        "scout.request_id": "r1",
        "scout.device_id": "car-7",
        "scout.mode": "int8",
        "scout.retention": 0.5,
        "scout.bytes": 1234,
        "scout.model": "qwen2.5-0.5b",
        "scout.link.rate_bps": 1e8,
        "scout.bit_plan": "int8",
    }


def test_scout_errors_mark_the_span(env_clean: pytest.MonkeyPatch) -> None:
    tel, spans = _role("cloud_decoder")
    with pytest.raises(BlobMissing), start_span(tel.tracer, "fetch"):
        raise BlobMissing("expired")
    span = _only(spans, "fetch")
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None and span.attributes["scout.error.code"] == "blob_missing"


def test_inject_and_extract() -> None:
    tel, _ = _role("selector")
    assert inject() == {}  # no current span, nothing to carry
    with tel.tracer.start_as_current_span("parent") as parent:
        headers = inject({"X-Other": "kept"})
    assert headers["X-Other"] == "kept"
    ctx = parent.get_span_context()
    assert headers["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    # Extraction is case-insensitive (a relay may change header case).
    from opentelemetry import trace

    remote = trace.get_current_span(extract({"TraceParent": headers["traceparent"]})).get_span_context()
    assert remote.trace_id == ctx.trace_id and remote.span_id == ctx.span_id and remote.is_remote
    assert not trace.get_current_span(extract({"traceparent": "garbage"})).get_span_context().is_valid


def test_otlp_switch() -> None:
    assert not otlp_enabled({})
    assert otlp_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert otlp_enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert otlp_enabled({}, force=True)
    assert not otlp_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not otlp_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})


def test_no_export_without_endpoint(env_clean: pytest.MonkeyPatch) -> None:
    tel = setup_telemetry("selector", settings=Settings())
    assert not tel.exporting and tel.tracer_provider._active_span_processor._span_processors == ()


async def _two_services_one_trace(bus: Bus, ns: str, selector: Telemetry, decoder: Telemetry) -> None:
    """selector: span "ask" -> request over the bus -> decoder: span "decode" (child of "ask") -> reply."""

    async def serve(msg: Msg) -> None:
        with start_span(decoder.tracer, "decode", headers=msg.headers, kind=SpanKind.CONSUMER, mode="scout"):
            await msg.respond(b"answer")

    await bus.subscribe(f"{ns}.decode", serve)
    with start_span(selector.tracer, "ask", kind=SpanKind.PRODUCER, mode="scout", nbytes=336):
        reply = await bus.request(f"{ns}.decode", b"question", inject(), timeout_s=5)
    assert reply.data == b"answer"


async def test_parent_links_across_the_bus(make_bus: BusFactory, ns: str, env_clean: pytest.MonkeyPatch) -> None:
    selector, selector_spans = _role("selector")
    decoder, decoder_spans = _role("cloud_decoder")
    bus = await make_bus("tel")
    await _two_services_one_trace(bus, ns, selector, decoder)
    ask, decode = _only(selector_spans, "ask"), _only(decoder_spans, "decode")
    assert decode.context.trace_id == ask.context.trace_id
    assert decode.parent is not None and decode.parent.span_id == ask.context.span_id and decode.parent.is_remote
    assert decode.resource.attributes["service.name"] == "scout-cloud_decoder"


async def test_parent_links_across_the_work_queue(
    make_bus: BusFactory, work_queue: WorkQueueSpec, env_clean: pytest.MonkeyPatch
) -> None:
    selector, selector_spans = _role("selector")
    decoder, decoder_spans = _role("cloud_decoder")
    bus = await make_bus("tel")
    done = asyncio.Event()

    async def handle(item: WorkItem) -> None:
        with start_span(decoder.tracer, "decode", headers=item.headers, kind=SpanKind.CONSUMER):
            done.set()

    await bus.consume(work_queue, handle)
    with start_span(selector.tracer, "enqueue", kind=SpanKind.PRODUCER):
        await bus.enqueue(work_queue.subjects[0], b"job", headers=inject(), msg_id="t1")
    await asyncio.wait_for(done.wait(), 5)
    enqueue, decode = _only(selector_spans, "enqueue"), _only(decoder_spans, "decode")
    assert decode.context.trace_id == enqueue.context.trace_id
    assert decode.parent is not None and decode.parent.span_id == enqueue.context.span_id


async def test_otlp_http_receiver_gets_one_trace_from_two_services(
    make_bus: BusFactory, ns: str, env_clean: pytest.MonkeyPatch
) -> None:
    """Two roles export over real OTLP/HTTP (configured only by OTEL_* variables) to oteltap; the request crosses
    the bus (NATS in the nats parametrisation) and the receiver sees one trace with the right parent link."""
    port = free_port()
    env_clean.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    env_clean.setenv("OTEL_METRICS_EXPORTER", "none")
    received: list[Any] = []
    receiver = OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=port))
    await receiver.start()

    async def collect() -> None:
        async for span in receiver.stream_traces():
            received.append(span)

    collector = asyncio.create_task(collect())
    selector = setup_telemetry("selector", settings=Settings())
    decoder = setup_telemetry("cloud_decoder", settings=Settings())
    try:
        assert selector.exporting and decoder.exporting
        await asyncio.sleep(0.05)  # the collector is subscribed
        bus = await make_bus("otlp")
        await _two_services_one_trace(bus, ns, selector, decoder)
        t0 = time.monotonic()
        assert await asyncio.to_thread(selector.force_flush)
        assert await asyncio.to_thread(decoder.force_flush)
        await eventually(lambda: {s.name for s in received} >= {"ask", "decode"}, timeout_s=10, what="spans")
        assert time.monotonic() - t0 < 10
        ask = next(s for s in received if s.name == "ask")
        decode = next(s for s in received if s.name == "decode")
        assert decode.trace_id == ask.trace_id and len(ask.trace_id) == 16
        assert decode.parent_span_id == ask.span_id
        assert ask.parent_span_id == b""
        attrs = {kv.key: kv.value for kv in ask.attributes}
        assert attrs["scout.mode"].string_value == "scout" and attrs["scout.bytes"].int_value == 336
    finally:
        selector.shutdown()
        decoder.shutdown()
        collector.cancel()
        await receiver.stop()
