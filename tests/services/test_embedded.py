"""The embedded default: all four roles in one process on the in-process bus (``inproc://``) and memory stores
(``memory://``), the same service code as the OS processes; answers equal the library path's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pydantic import SecretStr
from stack import MIXED_PLAN

from scout.datasets import Example
from scout.pipeline import PolicyConfig, answer_inprocess
from scout_runtime.bus import connect_bus
from scout_runtime.messages import AskReply, AskRequest
from scout_runtime.rpc import call
from scout_runtime.settings import Settings
from scout_services.cloud_decoder.args import DecoderArgs
from scout_services.cloud_decoder.main import CloudDecoderService
from scout_services.quantizer.main import QuantizerService
from scout_services.selector.args import SelectorArgs
from scout_services.selector.main import SelectorService
from scout_services.transport_policy.args import PolicyArgs
from scout_services.transport_policy.main import TransportPolicyService

pytestmark = pytest.mark.models


@pytest_asyncio.fixture
async def embedded(ref_lm: Any) -> AsyncIterator[tuple[Settings, list[Any]]]:
    ns = "e" + uuid.uuid4().hex[:10]
    settings = Settings(
        namespace=ns,
        nats_url=SecretStr(f"inproc://{ns}"),
        edge_store_url=SecretStr(f"memory://edge-{ns}"),
        cloud_store_url=SecretStr(f"memory://cloud-{ns}"),
        http_host="127.0.0.1",
        ack_wait_s=5,
    )
    services = [
        TransportPolicyService(settings, PolicyArgs(mixed_plan=MIXED_PLAN), health_port=0),
        QuantizerService(settings, health_port=0),
        CloudDecoderService(settings, DecoderArgs(dtype="fp32"), model=ref_lm, health_port=0),
        SelectorService(settings, SelectorArgs(dtype="fp32"), model=ref_lm, health_port=0, http_port=0),
    ]
    for service in services:
        await service.start()
    yield settings, services
    for service in reversed(services):
        await service.stop()


@pytest.mark.parametrize(("mode", "retention"), [("int4", 0.5), ("mixed", None), ("scout", 0.25)])
async def test_embedded_roles_give_the_library_answer(
    embedded: tuple[Settings, list[Any]], ref_lm: Any, squad: list[Example], mode: str, retention: float | None
) -> None:
    settings, services = embedded
    ex = squad[1]
    bus = await connect_bus(settings, name="embedded-client")
    try:
        req = AskRequest(
            request_id=uuid.uuid4().hex,
            device_id="emb",
            document=ex.context,
            question=ex.question,
            deadline_ms=60_000,
            max_new_tokens=6,
            mode=mode,
            retention=retention,
        )
        reply = await call(bus, settings.subjects().ask, req, AskReply, timeout_s=120)
    finally:
        await bus.close()
    ref = answer_inprocess(
        ref_lm,
        ref_lm,
        question=ex.question,
        document=ex.context,
        mode=mode,
        retention=retention,
        policy=PolicyConfig.for_model(ref_lm.spec, mixed_plan=MIXED_PLAN),
        max_new_tokens=6,
    )
    assert (reply.answer, reply.mode, reply.retention, reply.bytes_sent) == (
        ref.answer,
        ref.mode,
        ref.retention,
        ref.bytes_sent,
    )
    assert all(s.ports().get("metrics", 0) > 0 for s in services)
