"""Device-bound selectors (``SCOUT_SELECTOR_DEVICE_ID``, one per edge device pod) and readiness, on the real NATS
(JetStream) and Redis, roles in this process under a namespace of their own:

* two selectors bound to different devices: each device's asks (``<root>.ask.<device_id>``, ``scout ask --route
  device``) reach only its own selector; nobody bound serves the shared ``<root>.ask``;
* an ask for another device is refused with a typed ``forbidden`` error over NATS and HTTP (403);
* /readyz answers 503 while a selector is still starting (loading SmolLM2) and 200 once ``start()`` has finished.

Asks are forced to ``local`` (answered on the edge, a couple of tokens): routing is what is tested here, and the
other modes' hand-offs are the end-to-end tests' subject.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pydantic import SecretStr, ValidationError
from runtime_helpers import delete_prefix

from scout_runtime.bus import NatsBus, WorkQueueSpec
from scout_runtime.errors import BadRequest, ErrorCode, Forbidden, NoResponders
from scout_runtime.messages import AskReply, AskRequest, ErrorReply
from scout_runtime.rpc import call
from scout_runtime.settings import Settings
from scout_runtime.subjects import Subjects
from scout_services.client import ask, ask_subject
from scout_services.common import Role
from scout_services.selector.args import SelectorArgs
from scout_services.selector.main import SelectorService
from scout_services.transport_policy.main import TransportPolicyService

PHONE, CAR = "phone-1", "car-1"
DOCUMENT = "The Eiffel Tower is in Paris. It was finished in 1889 and is 330 metres tall."
QUESTION = "Where is the Eiffel Tower?"


def _settings(namespace: str, nats_url: str, redis_url: str) -> Settings:
    return Settings(
        namespace=namespace,
        nats_url=SecretStr(nats_url),
        edge_store_url=SecretStr(redis_url),
        cloud_store_url=SecretStr(redis_url),
        http_host="127.0.0.1",
        request_timeout_s=60,
    )


async def _cleanup(settings: Settings, redis_url: str) -> None:
    import redis.asyncio as redis_async

    client = redis_async.Redis.from_url(redis_url)
    await delete_prefix(client, f"{settings.namespace}:")
    await client.aclose()
    bus = await NatsBus.connect(settings, name="cleanup")
    await bus.delete_work_queue(WorkQueueSpec.for_decode(settings))
    await bus.close()


def _request(device_id: str) -> AskRequest:
    return AskRequest(
        request_id=uuid.uuid4().hex,
        device_id=device_id,
        document=DOCUMENT,
        question=QUESTION,
        deadline_ms=30_000,
        max_new_tokens=2,
        mode="local",
    )


async def _scout(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """``python -m scout_cli.main ARGS``: the exit code and stdout + stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scout_cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode()


def _asks(service: SelectorService, outcome: str) -> float:
    """The selector's ``scout_requests_total{op="ask", outcome=…}``: what this one selector served."""
    value = service.role.metrics.registry.get_sample_value(
        "scout_requests_total", {"role": "selector", "op": "ask", "outcome": outcome}
    )
    return value or 0.0


# --- settings, subjects, client routes (no services) ------------------------------------------------------------
def test_per_device_ask_subject() -> None:
    assert Subjects().ask_device(PHONE) == "scout.v1.ask.phone-1"
    assert Subjects("ns1").ask_device(CAR) == "ns1.scout.v1.ask.car-1"
    for bad in ("a.b", "*", ">", "", "x" * 65):
        with pytest.raises(BadRequest):
            Subjects().ask_device(bad)
    settings = Settings(namespace="ns1")
    assert ask_subject(settings, PHONE) == ask_subject(settings, PHONE, "shared") == "ns1.scout.v1.ask"
    assert ask_subject(settings, PHONE, "device") == "ns1.scout.v1.ask.phone-1"
    with pytest.raises(ValueError, match="route"):
        ask_subject(settings, PHONE, "broadcast")  # type: ignore[arg-type]


def test_selector_device_id_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCOUT_SELECTOR_DEVICE_ID", raising=False)
    assert SelectorArgs().device_id is None
    monkeypatch.setenv("SCOUT_SELECTOR_DEVICE_ID", PHONE)
    assert SelectorArgs().device_id == PHONE
    monkeypatch.setenv("SCOUT_SELECTOR_DEVICE_ID", "")
    assert SelectorArgs().device_id is None  # what a chart renders for "not set"
    monkeypatch.setenv("SCOUT_SELECTOR_DEVICE_ID", "phone.1")
    with pytest.raises(ValidationError):
        SelectorArgs()


async def test_a_role_is_not_ready_until_marked_started() -> None:
    role = Role.create("selector", Settings(http_host="127.0.0.1"))
    runner, port = await role.serve_health(port=0)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                body = await r.json()
                assert r.status == 503 and body["started"] is False and body["checks"] == {}
            role.mark_started()
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 200 and (await r.json())["started"] is True
            role.health.draining = True
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 503
    finally:
        await runner.cleanup()


# --- two device-bound selectors --------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def bound(
    services_nats_url: str, services_redis_url: str, ref_lm: Any
) -> AsyncIterator[tuple[Settings, dict[str, SelectorService]]]:
    """A policy and two selectors, bound to PHONE and CAR, sharing the reference model."""
    settings = _settings("d" + uuid.uuid4().hex[:10], services_nats_url, services_redis_url)
    started: list[Any] = []
    try:
        policy = TransportPolicyService(settings, health_port=0)
        await policy.start()
        started.append(policy)
        selectors = {}
        for device in (PHONE, CAR):
            args = SelectorArgs(dtype="fp32", device_id=device, warmup=False)
            selector = SelectorService(settings, args, model=ref_lm, health_port=0, http_port=0)
            await selector.start()
            started.append(selector)
            selectors[device] = selector
        yield settings, selectors
    finally:
        for service in reversed(started):
            await service.stop()
        await _cleanup(settings, services_redis_url)


@pytest.mark.models
async def test_each_devices_asks_reach_only_its_selector(
    bound: tuple[Settings, dict[str, SelectorService]], tmp_path: Path
) -> None:
    settings, selectors = bound
    assert {d: s.ask_subject for d, s in selectors.items()} == {
        PHONE: settings.subjects().ask_device(PHONE),
        CAR: settings.subjects().ask_device(CAR),
    }
    for device in (PHONE, CAR, PHONE, CAR):
        reply = await ask(_request(device), settings=settings, route="device", timeout_s=60)
        assert reply.device_id == device and reply.mode == "local" and reply.answered_by == "edge"
    for device, selector in selectors.items():
        assert (_asks(selector, "ok"), _asks(selector, "error")) == (2.0, 0.0), device
        assert (await selector.role.health.evaluate()) == {"bus": True, "edge_store": True, "cloud_store": True}
        assert selector.role.health.started

    # Bound selectors serve no one on the shared subject: an ask there finds no responders, not a wrong device.
    with pytest.raises(NoResponders):
        await ask(_request(PHONE), settings=settings, timeout_s=10)

    # `scout ask --route device --device-id D` takes the same way (the real command, as its own process).
    doc = tmp_path / "doc.txt"
    doc.write_text(DOCUMENT, encoding="utf-8")
    env = {
        **os.environ,
        "SCOUT_NATS_URL": settings.nats_url.get_secret_value(),
        "SCOUT_NAMESPACE": settings.namespace,
    }
    args = ["ask", QUESTION, "--document", str(doc), "--mode", "local", "--max-new-tokens", "2", "--json"]
    code, out = await _scout(*args, "--device-id", CAR, "--route", "device", env=env)
    assert code == 0, out
    assert json.loads(out)["device_id"] == CAR
    code, out = await _scout(*args, "--route", "everywhere", env=env)
    assert code == 2 and "--route" in out, out
    assert (_asks(selectors[CAR], "ok"), _asks(selectors[PHONE], "ok")) == (3.0, 2.0)


@pytest.mark.models
async def test_an_ask_for_another_device_is_forbidden(
    bound: tuple[Settings, dict[str, SelectorService]],
) -> None:
    settings, selectors = bound
    phone = selectors[PHONE]

    # NATS: car-1's ask sent to phone-1's subject gets a typed `forbidden` reply with its request id.
    bus = await NatsBus.connect(settings, name="test-device-routing")
    try:
        req = _request(CAR)
        with pytest.raises(Forbidden) as refused:
            await call(bus, settings.subjects().ask_device(PHONE), req, AskReply, timeout_s=30)
        assert refused.value.code is ErrorCode.FORBIDDEN and refused.value.request_id == req.request_id
    finally:
        await bus.close()

    # HTTP: the same refusal as 403 with the ErrorReply JSON; the client raises it as `Forbidden`.
    req = _request(CAR)
    url = f"http://127.0.0.1:{phone.ports()['http']}"
    async with aiohttp.ClientSession() as http, http.post(f"{url}/v1/ask", data=req.to_bytes()) as r:
        assert r.status == 403
        error = ErrorReply.model_validate_json(await r.read())
        assert (error.code, error.request_id) == (ErrorCode.FORBIDDEN, req.request_id)
    with pytest.raises(Forbidden):
        await ask(_request(CAR), settings=settings, http_url=url, timeout_s=30)

    # Its own device is still served, on both transports; the refusals were counted as `forbidden` errors.
    assert (await ask(_request(PHONE), settings=settings, http_url=url, timeout_s=60)).device_id == PHONE
    assert (await ask(_request(PHONE), settings=settings, route="device", timeout_s=60)).device_id == PHONE
    forbidden = phone.role.metrics.registry.get_sample_value(
        "scout_errors_total", {"role": "selector", "op": "ask", "code": "forbidden"}
    )
    assert forbidden == 3.0 and _asks(phone, "ok") == 2.0
    assert _asks(selectors[CAR], "ok") + _asks(selectors[CAR], "error") == 0.0


# --- readiness during a real start ------------------------------------------------------------------------------
@pytest.mark.models
async def test_readyz_is_503_until_start_has_finished(
    services_nats_url: str, services_redis_url: str, ref_lm: Any
) -> None:
    """A selector that loads SmolLM2 itself: /readyz is polled from the moment the health endpoint is up
    (``ref_lm``: only for its one torch thread)."""
    settings = _settings("r" + uuid.uuid4().hex[:10], services_nats_url, services_redis_url)
    args = SelectorArgs(dtype="fp32", device="cpu", device_id=PHONE, warmup=True)
    selector = SelectorService(settings, args, health_port=0, http_port=0)
    starting = asyncio.create_task(selector.start())
    seen: list[tuple[int, dict[str, Any], bool]] = []
    try:
        while "metrics" not in selector.ports():
            assert not starting.done() or starting.exception() is None
            await asyncio.sleep(0.005)
        base = f"http://127.0.0.1:{selector.ports()['metrics']}"
        async with aiohttp.ClientSession() as http:
            while not starting.done():
                model_loaded = selector.model is not None
                async with http.get(f"{base}/readyz") as r:
                    seen.append((r.status, await r.json(), model_loaded))
                await asyncio.sleep(0.02)
            await starting
            async with http.get(f"{base}/readyz") as r:
                after = (r.status, await r.json())
    finally:
        if not starting.done():
            starting.cancel()
        await selector.stop()
        await _cleanup(settings, services_redis_url)

    assert seen, "the start finished before /readyz could be asked"
    status, body, model_loaded = seen[0]
    assert (status, body["ready"], body["started"], model_loaded) == (503, False, False, False), body
    # (A poll sent just as the start finished may rightly see 200; none sent while the model was loading may.)
    assert all(status == 503 for status, _, loaded in seen if not loaded), "ready while the model was loading"
    assert after[0] == 200 and after[1]["started"] is True and after[1]["ready"] is True
    assert after[1]["checks"] == {"bus": True, "edge_store": True, "cloud_store": True}
