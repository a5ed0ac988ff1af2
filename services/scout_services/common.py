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
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict, TypeVar, Unpack

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from prometheus_client import CollectorRegistry

from scout_runtime.bus import Bus, EnqueueResult, Msg, Subscription, connect_bus
from scout_runtime.errors import BadRequest, BlobCorrupt, ScoutError, UnknownModel
from scout_runtime.limits import InflightLimiter, Limits
from scout_runtime.messages import DecodeRequest, Message
from scout_runtime.metrics import HealthState, ServiceMetrics, create_health_app, start_http
from scout_runtime.rpc import serve
from scout_runtime.settings import Settings
from scout_runtime.store import BlobStore, open_store
from scout_runtime.subjects import Subjects
from scout_runtime.telemetry import Telemetry, inject, scout_attributes, setup_telemetry, start_span

__all__ = [
    "Role",
    "RoleOptions",
    "RoleService",
    "Service",
    "ServiceOptions",
    "configure_logging",
    "enqueue_decode",
    "library_error",
    "result_cache_key",
    "run_service",
]

log = logging.getLogger("scout.services")
Req = TypeVar("Req", bound=Message)


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


async def enqueue_decode(role: Role, bus: Bus, **fields: Any) -> EnqueueResult:
    """Put one `DecodeRequest` (``fields``) on the decode work queue, with the current trace context in its headers
    and in the message. Both producers (the quantizer for KV modes, the selector for scout/text) send it this way.

    The message id deduplicates retries of this one publish; it is unique per enqueue so that a request id reused
    later is decoded again (the decoder's result cache answers a reused id, see cloud_decoder)."""
    headers = inject()
    decode = DecodeRequest(
        **fields, trace_context={k: v for k, v in headers.items() if k in ("traceparent", "tracestate")}
    )
    msg_id = f"{decode.request_id}.{uuid.uuid4().hex[:12]}"
    return await bus.enqueue(role.subjects.decode, decode.to_bytes(), headers=headers, msg_id=msg_id)


class RoleOptions(TypedDict, total=False):
    """`Role.create`'s keyword options, as a service passes them through."""

    telemetry: Telemetry | None
    registry: CollectorRegistry | None
    set_global: bool


class ServiceOptions(RoleOptions, total=False):
    """The keyword options every bus role's service takes (`RoleService`): tests and the demo pass
    ``health_port=0`` (and their own telemetry or metrics registry), a role's ``main`` passes ``set_global``."""

    health_port: int | None


class RoleService:
    """What the four bus roles' services (selector, quantizer, transport policy, cloud decoder) share: the role,
    the health endpoint, the bus connection and its readiness check, the stores, queue-group serving, and the
    order things close in at the end of a graceful stop (bus, then stores, then the health endpoint last, so a
    probe sees "draining" until the very end)."""

    def __init__(
        self,
        name: str,
        settings: Settings | None = None,
        *,
        health_port: int | None = None,
        **options: Unpack[RoleOptions],
    ) -> None:
        self.role = Role.create(name, settings, **options)
        self.health_port = health_port
        self.bus: Bus | None = None
        self._http: Any = None
        self._port = 0

    def ports(self) -> dict[str, int]:
        """The ports bound so far: none until the health endpoint is up (a test polls for it during a start)."""
        return {"metrics": self._port} if self._http is not None else {}

    async def _serve_health(self) -> None:
        """The health endpoint comes first, so a probe can watch the slow part of the start."""
        self._http, self._port = await self.role.serve_health(port=self.health_port)

    async def _connect(self, client: str) -> Bus:
        """Connect as ``<client>-<instance id>`` and make the connection part of readiness."""
        settings = self.role.settings
        self.bus = await connect_bus(settings, name=f"{client}-{settings.instance_id}")
        self.role.health.checks["bus"] = self._bus_ok
        return self.bus

    def _open_store(self, which: Literal["edge", "cloud"]) -> BlobStore:
        """The edge or the cloud store from the settings, its ping part of readiness (``<which>_store``)."""
        settings = self.role.settings
        url = settings.edge_store_url if which == "edge" else settings.cloud_store_url
        store = open_store(url.get_secret_value(), settings=settings)
        self.role.health.checks[f"{which}_store"] = store.ping
        return store

    async def _serve(
        self,
        subject: str,
        request_cls: type[Req],
        handler: Callable[[Req, Msg], Awaitable[Message]],
        *,
        queue: str,
        concurrency: int,
        op: str,
        inflight: InflightLimiter | None = None,
    ) -> Subscription:
        """`scout_runtime.rpc.serve` in a queue group, with this role's limits, tracer and metrics."""
        assert self.bus is not None
        role = self.role
        return await serve(
            self.bus,
            subject,
            request_cls,
            handler,
            queue=queue,
            concurrency=concurrency,
            limits=role.limits,
            tracer=role.telemetry.tracer,
            metrics=role.metrics,
            inflight=inflight,
            op=op,
        )

    async def _bus_ok(self) -> bool:
        return self.bus is not None and self.bus.is_connected

    async def _close(self, *stores: BlobStore | None) -> None:
        """The end of a graceful stop, once the role's subscriptions have drained."""
        if self.bus is not None:
            await self.bus.close()
        for store in stores:
            if store is not None:
                await store.close()
        if self._http is not None:
            await self._http.cleanup()


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
