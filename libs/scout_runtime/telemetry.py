"""OpenTelemetry per role: tracer and meter with ``service.name=scout-<role>``, OTLP/HTTP export, NATS propagation.

Why providers per role instead of the global ones: ``scout demo`` runs every role in one process, and a trace in
Jaeger must still show which service did what; each role therefore gets its own `TracerProvider` with its own
resource. A service process may additionally install its providers globally (``set_global=True``) so libraries
that use the global API are traced too.

Export follows the standard variables, read by the OTLP/HTTP exporter itself (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``…_HEADERS``, ``…_TIMEOUT``, ``…_CERTIFICATE``): it is on when an endpoint
variable is set (or when forced: ``SCOUT_OTEL_FORCE``, exporting to the exporter's default endpoint) and off when
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. Off costs nothing but span bookkeeping.

Across the bus, the W3C trace context (``traceparent``, ``tracestate``) rides in NATS headers: the sender calls
`inject`, the receiver starts its span with ``headers=`` (`start_span` extracts the parent), so one trace shows
prefill, scoring, plan, encode, upload, fetch, decode and generation across services (DESIGN.md, step 6).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from scout_runtime.errors import ScoutError
from scout_runtime.settings import Settings

__all__ = [
    "Telemetry",
    "extract",
    "inject",
    "otlp_enabled",
    "scout_attributes",
    "setup_telemetry",
    "start_span",
]

_PROPAGATOR = TraceContextTextMapPropagator()
_TRUE = {"1", "true", "yes", "on"}


class _HeaderGetter(Getter[Mapping[str, str]]):
    """Case-insensitive header lookup (NATS preserves case; a relay or client may not)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        key = key.lower()
        for k, v in carrier.items():
            if k.lower() == key:
                return [v]
        return None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def otlp_enabled(env: Mapping[str, str] | None = None, *, force: bool = False) -> bool:
    """Whether traces should be exported over OTLP, by the standard variables (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    if force:
        return True
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


@dataclass
class Telemetry:
    """One role's tracer and meter, and their providers (flush them before exiting)."""

    role: str
    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    tracer: Tracer
    meter: otel_metrics.Meter
    exporting: bool

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        """Export everything buffered now (before exiting, or before asserting on a receiver)."""
        ok = self.tracer_provider.force_flush(timeout_ms)
        return bool(self.meter_provider.force_flush(timeout_ms)) and ok

    def shutdown(self) -> None:
        """Flush and stop both providers (graceful shutdown)."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_telemetry(
    role: str,
    *,
    settings: Settings | None = None,
    span_exporter: SpanExporter | None = None,
    force: bool | None = None,
    set_global: bool = False,
    resource_attributes: Mapping[str, str] | None = None,
) -> Telemetry:
    """Tracer and meter for ``role`` (service name ``<prefix>-<role>``, ``scout-selector`` by default).

    ``span_exporter`` (e.g. the SDK's in-memory exporter) replaces the OTLP exporter and exports each span as it
    ends. Otherwise OTLP/HTTP is used when `otlp_enabled` (``force`` defaults to ``settings.otel_force``).
    """
    settings = settings or Settings()
    name = settings.service_name(role)
    attrs: dict[str, str] = {
        "service.name": name,
        "service.namespace": settings.otel_service_prefix,
        "service.instance.id": settings.instance_id,
        "scout.role": role,
    }
    attrs.update(resource_attributes or {})
    resource = Resource.create(attrs)
    tracer_provider = TracerProvider(resource=resource)
    readers: list[Any] = []
    exporting = False
    if span_exporter is not None:
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        exporting = True
    elif otlp_enabled(force=settings.otel_force if force is None else force):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        exporting = True
        if os.environ.get("OTEL_METRICS_EXPORTER", "").strip().lower() != "none":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        otel_metrics.set_meter_provider(meter_provider)
    return Telemetry(
        role=role,
        service_name=name,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        tracer=tracer_provider.get_tracer("scout_runtime"),
        meter=meter_provider.get_meter("scout_runtime"),
        exporting=exporting,
    )


def inject(headers: MutableMapping[str, str] | None = None, context: Context | None = None) -> dict[str, str]:
    """Headers with the W3C trace context of ``context`` (default: the current span) added."""
    out: dict[str, str] = dict(headers or {})
    _PROPAGATOR.inject(out, context=context)
    return out


def extract(headers: Mapping[str, str] | None) -> Context:
    """The remote parent context carried by message headers (an empty context if there is none)."""
    return _PROPAGATOR.extract(headers or {}, getter=_GETTER)


def scout_attributes(
    *,
    request_id: str | None = None,
    device_id: str | None = None,
    mode: str | None = None,
    retention: float | None = None,
    nbytes: int | None = None,
    model: str | None = None,
    link_rate_bps: float | None = None,
    **extra: str | int | float | bool | None,
) -> dict[str, str | int | float | bool]:
    """Span attributes under the ``scout.`` namespace, None values left out."""
    values: dict[str, Any] = {
        "scout.request_id": request_id,
        "scout.device_id": device_id,
        "scout.mode": mode,
        "scout.retention": retention,
        "scout.bytes": nbytes,
        "scout.model": model,
        "scout.link.rate_bps": link_rate_bps,
    }
    values.update({f"scout.{k}": v for k, v in extra.items()})
    return {k: v for k, v in values.items() if v is not None}


@contextlib.contextmanager
def start_span(
    tracer: Tracer,
    name: str,
    *,
    headers: Mapping[str, str] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
    **scout_attrs: Any,
) -> Iterator[Span]:
    """A current span named ``name``; its parent is the context in ``headers`` when given (a message received),
    the current span otherwise. ``scout_attrs`` go through `scout_attributes`. A `ScoutError` escaping the block
    is recorded with its code (``scout.error.code``) and marks the span as failed."""
    context = extract(headers) if headers is not None else None
    attrs = {**scout_attributes(**scout_attrs), **(attributes or {})}
    with tracer.start_as_current_span(name, context=context, kind=kind, attributes=attrs) as span:
        try:
            yield span
        except ScoutError as e:
            span.set_attribute("scout.error.code", e.code.value)
            raise
