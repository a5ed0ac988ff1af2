"""Prometheus metrics and the health app, over real HTTP."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from scout_runtime.errors import BlobCorrupt, Overloaded
from scout_runtime.limits import InflightLimiter
from scout_runtime.metrics import HEALTH_KEY, HealthState, ServiceMetrics, create_health_app, start_http


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_counters_histograms_gauges() -> None:
    m = ServiceMetrics("cloud_decoder")
    with m.track("decode"), m.stage("generate"):
        pass
    with pytest.raises(BlobCorrupt), m.track("decode"):
        raise BlobCorrupt("bad checksum")
    with pytest.raises(RuntimeError), m.track("decode"):
        raise RuntimeError("bug")
    m.sent("int8", 1000)
    m.sent("int8", 500)
    m.observe_timings({"fetch": 0.002, "decode": 0.3})
    m.queue_lag.set(7)
    m.redeliveries.inc()
    r = m.registry
    base = {"role": "cloud_decoder"}
    assert _value(r, "scout_requests_total", **base, op="decode", outcome="ok") == 1
    assert _value(r, "scout_requests_total", **base, op="decode", outcome="error") == 2
    assert _value(r, "scout_errors_total", **base, op="decode", code="blob_corrupt") == 1
    assert _value(r, "scout_errors_total", **base, op="decode", code="internal") == 1
    assert _value(r, "scout_bytes_sent_total", **base, mode="int8") == 1500
    assert _value(r, "scout_stage_seconds_count", **base, stage="generate") == 1
    assert _value(r, "scout_stage_seconds_count", **base, stage="fetch") == 1
    assert _value(r, "scout_inflight", **base) == 0
    assert _value(r, "scout_decode_queue_lag", **base) == 7
    assert _value(r, "scout_redeliveries_total", **base) == 1


def test_roles_share_one_registry() -> None:
    registry = CollectorRegistry()
    a, b = ServiceMetrics("selector", registry), ServiceMetrics("quantizer", registry)
    a.count("ask")
    b.count("encode")
    assert _value(registry, "scout_requests_total", role="selector", op="ask", outcome="ok") == 1
    assert _value(registry, "scout_requests_total", role="quantizer", op="encode", outcome="ok") == 1


def test_fresh_registries_get_their_own_families() -> None:
    """Registries come and go (tests, roles); each new one must get its own metric families."""
    for i in range(50):
        registry = CollectorRegistry()  # often allocated where the previous, freed one was
        ServiceMetrics(f"r{i}", registry).count("op")
        assert _value(registry, "scout_requests_total", role=f"r{i}", op="op", outcome="ok") == 1
        del registry


def test_inflight_limiter() -> None:
    limiter = InflightLimiter(2)
    with limiter.acquire("car"), limiter.acquire("car"):
        assert limiter.inflight("car") == 2
        with pytest.raises(Overloaded), limiter.acquire("car"):
            pass
        with limiter.acquire("bike"):  # other devices are not affected
            assert limiter.inflight() == 3
    assert limiter.inflight() == 0
    with pytest.raises(ValueError):
        InflightLimiter(0)


async def test_health_app_over_http() -> None:
    metrics = ServiceMetrics("selector")
    metrics.count("ask")
    store_ok = True

    async def store_check() -> bool:
        return store_ok

    async def broken_check() -> bool:
        raise ConnectionError("down")

    state = HealthState(checks={"bus": lambda: _true(), "store": store_check})
    app = create_health_app(state, metrics=metrics)
    assert app[HEALTH_KEY] is state
    runner, port = await start_http(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200 and (await r.json()) == {"status": "ok"}
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200 and (await r.json())["checks"] == {"bus": True, "store": True}
            store_ok = False
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503 and (await r.json())["checks"]["store"] is False
            store_ok = True
            state.checks["model"] = broken_check  # a check that raises counts as failed, never as a 500
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503
            del state.checks["model"]
            state.draining = True
            async with http.get(f"{base}/readyz") as r:
                body = await r.json()
                assert r.status == 503 and body["draining"] is True
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200  # draining is not dead
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                assert 'scout_requests_total{op="ask",outcome="ok",role="selector"} 1.0' in text
    finally:
        await runner.cleanup()


async def _true() -> bool:
    return True
