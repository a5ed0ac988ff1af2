"""Prometheus metrics for services, and the small HTTP app every service mounts: /healthz, /readyz, /metrics.

Why one family set per registry with a ``role`` label (rather than metric names per role): ``scout demo`` runs all
roles in one process behind one /metrics, and dashboards/KEDA queries stay the same whether roles share a process or
not. Families are created once per registry (`ServiceMetrics` for a second role reuses them).

Liveness vs readiness: /healthz answers 200 while the event loop runs (a wedged loop fails it and the pod is
restarted); /readyz answers 200 only once the service has started (`HealthState.started`: model loaded, subscriptions
made) and while its checks pass (bus connected, store reachable), and 503 before, when one fails, or while draining,
so Kubernetes routes no work to a pod that is still loading its model and stops routing new work before a graceful
shutdown finishes the in-flight work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from scout_runtime.errors import ScoutError

__all__ = [
    "HEALTH_KEY",
    "LATENCY_BUCKETS_S",
    "HealthState",
    "ServiceMetrics",
    "create_health_app",
    "start_http",
]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""From a loopback NATS hop (~0.4 ms) to a slow CPU generation (a minute)."""


@dataclass
class _Families:
    requests: Counter
    errors: Counter
    stage_seconds: Histogram
    bytes_sent: Counter
    inflight: Gauge
    queue_lag: Gauge
    redeliveries: Counter


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
"""Families per registry, held weakly: a registry that is gone takes its families with it (keying by ``id()``
would hand a new registry, allocated at the same address, the families of a dead one)."""


def _families(registry: CollectorRegistry) -> _Families:
    key = registry
    if key not in _FAMILIES:
        _FAMILIES[key] = _Families(
            requests=Counter(
                "scout_requests",
                "Requests handled, by operation and outcome",
                ["role", "op", "outcome"],
                registry=registry,
            ),
            errors=Counter("scout_errors", "Failed requests by error code", ["role", "op", "code"], registry=registry),
            stage_seconds=Histogram(
                "scout_stage_seconds",
                "Duration of one pipeline stage",
                ["role", "stage"],
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            ),
            bytes_sent=Counter(
                "scout_bytes_sent", "Bytes sent over the uplink, by mode", ["role", "mode"], registry=registry
            ),
            inflight=Gauge("scout_inflight", "Requests in flight", ["role"], registry=registry),
            queue_lag=Gauge(
                "scout_decode_queue_lag",
                "Decode requests not yet finished (pending + un-acked)",
                ["role"],
                registry=registry,
            ),
            redeliveries=Counter(
                "scout_redeliveries", "Work items received more than once", ["role"], registry=registry
            ),
        )
    return _FAMILIES[key]


class ServiceMetrics:
    """One role's metrics in a registry (its own by default)."""

    def __init__(self, role: str, registry: CollectorRegistry | None = None) -> None:
        self.role = role
        self.registry = registry or CollectorRegistry()
        self._f = _families(self.registry)
        self.inflight = self._f.inflight.labels(role)
        self.queue_lag = self._f.queue_lag.labels(role)
        self.redeliveries = self._f.redeliveries.labels(role)

    def count(self, op: str, outcome: str = "ok") -> None:
        """One request of ``op`` finished with ``outcome``."""
        self._f.requests.labels(self.role, op, outcome).inc()

    def error(self, op: str, code: str) -> None:
        """One request of ``op`` failed with error ``code`` (counted as a request too)."""
        self._f.requests.labels(self.role, op, "error").inc()
        self._f.errors.labels(self.role, op, code).inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        self._f.stage_seconds.labels(self.role, stage).observe(seconds)

    def observe_timings(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            self.observe_stage(stage, seconds)

    def sent(self, mode: str, nbytes: int) -> None:
        """Bytes that crossed the uplink in ``mode`` (the quantity Scout minimises)."""
        self._f.bytes_sent.labels(self.role, mode).inc(nbytes)

    @contextlib.contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        """Time the block as one stage (recorded even if it fails)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe_stage(stage, time.perf_counter() - t0)

    @contextlib.contextmanager
    def track(self, op: str) -> Iterator[None]:
        """Count one request of ``op``: in-flight while the block runs, then ok or its error code."""
        self.inflight.inc()
        try:
            yield
        except ScoutError as e:
            self.error(op, e.code.value)
            raise
        except Exception:
            self.error(op, "internal")
            raise
        else:
            self.count(op)
        finally:
            self.inflight.dec()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


Check = Callable[[], Awaitable[bool]]


@dataclass
class HealthState:
    """Readiness: the started flag a service flips once its start has finished, its checks, and the draining flag
    it flips when it starts shutting down.

    ``started`` is a flag rather than one more check: checks are registered during a start (the bus check exists
    only once there is a bus), so until the start has finished the set of checks says nothing, and an empty set
    passes. A bare `HealthState` counts as started; a service's (``scout_services.common.Role``) starts out not started.
    """

    checks: dict[str, Check] = field(default_factory=dict)
    draining: bool = False
    started: bool = True
    check_timeout_s: float = 2.0

    async def evaluate(self) -> dict[str, bool]:
        async def one(check: Check) -> bool:
            try:
                return bool(await asyncio.wait_for(check(), self.check_timeout_s))
            except Exception:
                return False

        names = list(self.checks)
        results = await asyncio.gather(*(one(self.checks[n]) for n in names))
        return dict(zip(names, results, strict=True))


HEALTH_KEY: web.AppKey[HealthState] = web.AppKey("scout_health", HealthState)
"""Where the app keeps its `HealthState` (``app[HEALTH_KEY].draining = True`` at shutdown)."""


def create_health_app(
    state: HealthState | None = None,
    *,
    metrics: ServiceMetrics | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """An aiohttp app with /healthz, /readyz and /metrics; services add their own routes to it (e.g. /v1/ask)."""
    state = state or HealthState()
    reg = registry or (metrics.registry if metrics is not None else None)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        results = await state.evaluate()
        ready = state.started and not state.draining and all(results.values())
        body: dict[str, Any] = {"ready": ready, "started": state.started, "draining": state.draining, "checks": results}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        data = generate_latest(reg) if reg is not None else b""
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app[HEALTH_KEY] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def start_http(app: web.Application, host: str = "0.0.0.0", port: int = 9090) -> tuple[web.AppRunner, int]:
    """Serve ``app``; returns the runner (``await runner.cleanup()`` to stop) and the bound port (for port 0)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses
    bound = int(addresses[0][1]) if addresses else port
    return runner, bound
