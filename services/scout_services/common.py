"""Wiring every role shares: logging, telemetry, metrics and health endpoints, spans, the ready line, shutdown.

Why here: the four roles differ only in what they serve; how a role process starts (health endpoint first, then
the slow part such as loading a model, then "ready": /readyz answers 503 until the role's ``start()`` has finished,
`Role.mark_started`), how it reports itself (a JSON ready line on stdout with its bound ports, so a supervisor or a
test can start it with port 0) and how it stops (SIGTERM: flip readiness to "draining", stop taking work, let
in-flight work finish, flush telemetry, exit 0) must be the same for all.

Every span a role makes carries ``scout.role`` (``start_span``'s ``role=`` attribute): an OTLP receiver sees spans
without their resource, and a trace must still show which service did what.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from prometheus_client import CollectorRegistry

from scout_runtime.errors import BadRequest, BlobCorrupt, ScoutError, UnknownModel
from scout_runtime.limits import Limits
from scout_runtime.metrics import HealthState, ServiceMetrics, create_health_app, start_http
from scout_runtime.settings import Settings
from scout_runtime.subjects import Subjects
from scout_runtime.telemetry import Telemetry, scout_attributes, setup_telemetry, start_span

__all__ = [
    "Role",
    "Service",
    "configure_logging",
    "library_error",
    "result_cache_key",
    "run_service",
]

log = logging.getLogger("scout.services")


def configure_logging() -> None:
    """Logs to stderr (stdout carries only the ready line), level from ``SCOUT_LOG_LEVEL`` (default INFO)."""
    level = os.environ.get("SCOUT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@dataclass
class Role:
    """One role's shared machinery: settings, limits, subjects, tracer, metrics and readiness."""

    name: str
    settings: Settings
    telemetry: Telemetry
    metrics: ServiceMetrics
    health: HealthState = field(default_factory=lambda: HealthState(started=False))
    """Not ready until `mark_started` (`run_service` calls it once ``start()`` returns): the health endpoint is up
    first, while the model loads, and must not report ready then."""

    @classmethod
    def create(
        cls,
        name: str,
        settings: Settings | None = None,
        *,
        telemetry: Telemetry | None = None,
        registry: CollectorRegistry | None = None,
        set_global: bool = False,
    ) -> Role:
        """``set_global`` installs the tracer provider process-wide (a role that owns its process)."""
        settings = settings or Settings()
        tel = telemetry or setup_telemetry(name, settings=settings, set_global=set_global)
        return cls(name=name, settings=settings, telemetry=tel, metrics=ServiceMetrics(name, registry))

    def mark_started(self) -> None:
        """The role's start has finished (model loaded, subscriptions made): /readyz may now answer 200."""
        self.health.started = True

    @property
    def limits(self) -> Limits:
        return self.settings.limits()

    @property
    def subjects(self) -> Subjects:
        return self.settings.subjects()

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        headers: Mapping[str, str] | None = None,
        **attrs: Any,
    ) -> Iterator[Span]:
        """A span of this role (``scout.role`` set), child of ``headers``' context or of the current span."""
        with start_span(self.telemetry.tracer, name, kind=kind, headers=headers, role=self.name, **attrs) as span:
            yield span

    def mark_current(self, **attrs: Any) -> None:
        """Tag the current span (e.g. the one `scout_runtime.rpc.serve` opened) as this role's."""
        span = trace.get_current_span()
        span.set_attribute("scout.role", self.name)
        for key, value in scout_attributes(**attrs).items():
            span.set_attribute(key, value)

    async def serve_health(
        self, *, port: int | None = None, routes: Callable[[web.Application], None] | None = None
    ) -> tuple[web.AppRunner, int]:
        """Serve /healthz, /readyz and /metrics (and whatever ``routes`` adds) on ``metrics_port`` (or ``port``);
        returns the runner (``cleanup()`` it at shutdown) and the bound port."""
        app = create_health_app(self.health, metrics=self.metrics)
        if routes is not None:
            routes(app)
        return await start_http(app, self.settings.http_host, self.settings.metrics_port if port is None else port)


def result_cache_key(prefix: str, device_id: str, request_id: str) -> str:
    """Where a decoder keeps the reply it sent for a request (cloud store): redeliveries are acked, not answered
    twice, and a request id reused after its decode finished is answered from here."""
    return f"{prefix}result:{device_id}:{request_id}"


def library_error(error: Exception, request_id: str | None = None) -> ScoutError:
    """The typed error for an exception from ``libs/scout``: a blob that does not verify is ``blob_corrupt``, one
    made by another model ``unknown_model``; any other ValueError is the request's fault (``bad_request``)."""
    from scout.codec.wire import BlobError, BlobFingerprintError

    if isinstance(error, ScoutError):
        return error
    if isinstance(error, BlobFingerprintError):
        return UnknownModel(str(error), request_id=request_id)
    if isinstance(error, BlobError):
        return BlobCorrupt(str(error), request_id=request_id)
    if isinstance(error, ValueError | IndexError):
        return BadRequest(str(error), request_id=request_id)
    raise error


class Service(Protocol):
    """What `run_service` runs: a role that starts, reports its ports, and stops gracefully."""

    role: Role

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ports(self) -> dict[str, int]: ...


async def run_service(service: Service) -> None:
    """Run a role as this process: start it, mark it started (/readyz), print the ready line, wait for
    SIGTERM/SIGINT, stop gracefully. A role started in-process without this calls ``role.mark_started()`` itself.

    The ready line is one JSON object on stdout: ``{"event": "ready", "role": …, "instance": …, "ports": {…}}``.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    role = service.role
    try:
        await service.start()
        role.mark_started()
        ready = {
            "event": "ready",
            "role": role.name,
            "instance": role.settings.instance_id,
            "ports": service.ports(),
        }
        print(json.dumps(ready), flush=True)
        log.info("%s ready: %s", role.name, json.dumps(ready["ports"]))
        await stop.wait()
        log.info("%s: draining", role.name)
    finally:
        role.health.draining = True
        await service.stop()
        role.telemetry.force_flush()
        role.telemetry.shutdown()
        print(json.dumps({"event": "stopped", "role": role.name}), flush=True)
