"""Fixtures of the service tests: real nats-server (JetStream) and redis-server, the reference model for the
in-process library path, and the stack of role processes (session-scoped: starting five Python processes that
each load a model is the expensive part, so every end-to-end test shares one stack under a unique namespace).

Every model runs with one torch thread, in the service processes (``OMP_NUM_THREADS=1``) and here, so both paths
compute the same floating-point operations in the same order.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from runtime_helpers import delete_prefix, free_port, local_or_own_server
from stack import ServiceStack, SpanSink

from scout.datasets import Example, load_examples
from scout_runtime.bus import NatsBus, WorkQueueSpec
from scout_runtime.settings import Settings


@pytest.fixture(scope="session")
def services_nats_url() -> Iterator[str]:
    yield from local_or_own_server("nats")


@pytest.fixture(scope="session")
def services_redis_url() -> Iterator[str]:
    yield from local_or_own_server("redis")


@pytest.fixture(scope="session")
def ref_lm() -> Iterator[Any]:
    """SmolLM2 in fp32 with one torch thread: the model of the in-process path (both ends)."""
    import torch

    from scout.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model("smollm2-135m", dtype="fp32", device="cpu")
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def squad() -> list[Example]:
    """A handful of short, real SQuAD v2 prompts."""
    return load_examples("squad_v2", n=4, seed=7, answerable_only=True, max_context_chars=600)


@pytest.fixture(scope="session")
def stack(services_nats_url: str, services_redis_url: str) -> Iterator[ServiceStack]:
    """Policy, quantizer, two decoders and a selector, each its own process, in a fresh namespace."""
    namespace = "s" + uuid.uuid4().hex[:10]
    sink = SpanSink(free_port())
    sink.start()
    stack = ServiceStack(namespace=namespace, nats_url=services_nats_url, redis_url=services_redis_url, sink=sink)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop_all()
        sink.stop()
        _cleanup(namespace, services_nats_url, services_redis_url)
        shutil.rmtree(stack.workdir, ignore_errors=True)


def _cleanup(namespace: str, nats_url: str, redis_url: str) -> None:
    import asyncio

    import redis.asyncio as redis_async

    async def run() -> None:
        client = redis_async.Redis.from_url(redis_url)
        await delete_prefix(client, f"{namespace}:")
        await client.aclose()
        settings = Settings(nats_url=SecretStr(nats_url), namespace=namespace)
        bus = await NatsBus.connect(settings, name="cleanup")
        await bus.delete_work_queue(WorkQueueSpec.for_decode(settings))
        await bus.close()

    asyncio.run(run())


@pytest.fixture
def settings(stack: ServiceStack) -> Settings:
    """The client's settings for the stack's namespace."""
    return Settings(nats_url=SecretStr(stack.nats_url), namespace=stack.namespace, request_timeout_s=180)


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[NatsBus]:
    bus = await NatsBus.connect(settings, name="test-client", poll_s=0.2)
    yield bus
    await bus.close()
