"""Fixtures for the runtime tests: real nats-server / redis-server (the local ones, or our own), and the embedded bus
and store side by side, so every contract test runs against both implementations.

Async tests need no marker: ``tests/conftest.py`` marks coroutine test functions ``asyncio`` at collection.
"""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as redis_async
from pydantic import SecretStr
from runtime_helpers import AclRedis, AuthNats, BusFactory, delete_prefix, local_or_own_server, start_nats, start_redis

from scout_runtime.bus import Bus, InProcessBroker, InProcessBus, NatsBus, WorkQueueSpec
from scout_runtime.settings import Settings
from scout_runtime.store import BlobStore, MemoryStore, RedisStore


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The local nats-server (127.0.0.1:4222, JetStream) if it runs, else one of our own."""
    yield from local_or_own_server("nats")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The local redis-server (127.0.0.1:6379) if it runs, else one of our own."""
    yield from local_or_own_server("redis")


@pytest.fixture(scope="session")
def nats_auth() -> Iterator[AuthNats]:
    """Our own nats-server with JetStream and user/password authentication."""
    user, password = "scout", secrets.token_urlsafe(16)
    server = start_nats("--user", user, "--pass", password)
    yield AuthNats(f"nats://127.0.0.1:{server.port}", user, password, server)
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_acl() -> Iterator[AclRedis]:
    """Our own redis-server with a password on the default user (device ACL users are added by the tests)."""
    password = secrets.token_urlsafe(16)
    server = start_redis("--requirepass", password)
    yield AclRedis(f"redis://127.0.0.1:{server.port}/0", password, server)
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


# --- names ---------------------------------------------------------------------------------------------------
@pytest.fixture
def ns() -> str:
    """A namespace unique to this test (subjects, streams, store keys never collide with other runs)."""
    return "t" + uuid.uuid4().hex[:12]


# --- buses ---------------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(params=["inproc", "nats"])
async def make_bus(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[BusFactory]:
    """A factory of bus clients of one "server": in-process clients of one broker, or NATS connections."""
    broker = InProcessBroker()
    made: list[Bus] = []

    async def make(name: str = "test") -> Bus:
        bus: Bus
        if request.param == "inproc":
            bus = InProcessBus(broker, name=name)
        else:
            bus = await NatsBus.connect(Settings(nats_url=SecretStr(nats_url)), name=name, poll_s=0.2)
        made.append(bus)
        return bus

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for bus in made:
        await bus.close()


@pytest_asyncio.fixture
async def bus(make_bus: BusFactory) -> Bus:
    return await make_bus("main")


@pytest_asyncio.fixture
async def work_queue(make_bus: BusFactory, ns: str) -> AsyncIterator[WorkQueueSpec]:
    """A fresh work queue (short ack_wait for redelivery tests), deleted afterwards."""
    admin = await make_bus("admin")
    spec = WorkQueueSpec(
        stream=f"T_{ns}", subjects=(f"{ns}.work",), durable="workers", ack_wait_s=0.3, max_deliver=3, nak_delay_s=0
    )
    await admin.ensure_work_queue(spec)
    yield spec
    await admin.delete_work_queue(spec)


@pytest_asyncio.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[redis_async.Redis]:
    client = redis_async.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, ns: str, redis_url: str) -> AsyncIterator[BlobStore]:
    """A store with a unique key prefix, emptied afterwards."""
    prefix = f"{ns}:scout:"
    s: BlobStore
    if request.param == "memory":
        s = MemoryStore(f"test-{ns}", prefix=prefix, default_ttl_s=60, max_blob_bytes=8 * 1024 * 1024)
    else:
        s = RedisStore(redis_url, prefix=prefix, default_ttl_s=60, max_blob_bytes=8 * 1024 * 1024)
    yield s
    if isinstance(s, RedisStore):
        await delete_prefix(s.client, prefix)
    await s.close()


@pytest.fixture
def env_clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SCOUT_* or OTEL_* variables from the outer environment."""
    for key in list(os.environ):
        if key.startswith(("SCOUT_", "OTEL_")):
            monkeypatch.delenv(key)
    return monkeypatch
