"""Redis-only store behaviour against a redis-server of our own with authentication: AUTH from the URL or settings,
and per-device ACL users that make Redis itself refuse cross-device access."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as redis_async
import redis.exceptions
from pydantic import SecretStr
from runtime_helpers import AclRedis, delete_prefix

from scout_runtime.errors import Forbidden
from scout_runtime.settings import Settings
from scout_runtime.store import (
    REDIS_DEVICE_COMMANDS,
    MemoryStore,
    RedisStore,
    open_store,
    redis_device_acl,
    redis_device_user,
)


@pytest_asyncio.fixture
async def admin(redis_acl: AclRedis, ns: str) -> AsyncIterator[redis_async.Redis]:
    client = redis_async.Redis.from_url(redis_acl.url, password=redis_acl.admin_password)
    yield client
    await delete_prefix(client, f"{ns}:")
    for user in await client.acl_users():
        name = user.decode() if isinstance(user, bytes) else user
        if name.startswith("scout-device-") and ns in name:
            await client.acl_deluser(name)
    await client.aclose()


def test_acl_rules_confine_keys_and_commands() -> None:
    rules = redis_device_acl("car-7", "s3cret", prefix="scout:")
    assert rules[:3] == ["reset", "on", ">s3cret"]
    assert "~scout:blob:car-7:*" in rules and "~scout:doc:*" in rules
    assert "-@all" in rules and "+get" in rules and "+flushall" not in rules
    assert "~*" not in rules and "allkeys" not in rules and "+@all" not in rules
    assert "~scout:doc:*" not in redis_device_acl("car-7", "s3cret", documents=False)
    assert redis_device_user("car-7") == "scout-device-car-7"
    for bad_id in ("car*", "a:b", "x y", ""):
        with pytest.raises(ValueError):
            redis_device_acl(bad_id, "pw")
    with pytest.raises(ValueError):
        redis_device_acl("car", "pw with space")
    with pytest.raises(ValueError):
        redis_device_acl("car", "pw", prefix="scout*")


async def test_device_acl_users_are_isolated_by_redis(redis_acl: AclRedis, admin: redis_async.Redis, ns: str) -> None:
    prefix = f"{ns}:scout:"
    passwords = {dev: secrets.token_urlsafe(12) for dev in (f"alice-{ns}", f"bob-{ns}")}
    for dev, pw in passwords.items():
        await admin.execute_command("ACL", "SETUSER", redis_device_user(dev), *redis_device_acl(dev, pw, prefix=prefix))
    alice_id, bob_id = passwords
    alice = RedisStore(redis_acl.url, username=redis_device_user(alice_id), password=passwords[alice_id], prefix=prefix)
    bob = RedisStore(redis_acl.url, username=redis_device_user(bob_id), password=passwords[bob_id], prefix=prefix)
    try:
        ref = await alice.for_device(alice_id).put(b"alice's KV", ttl_s=30)
        assert await alice.for_device(alice_id).get(ref) == b"alice's KV"
        assert await alice.ttl(ref.key) is not None
        doc = await alice.put_document("a shared document")
        assert await bob.get_document(doc) == "a shared document"  # documents are shared (and verified)

        # Bob's code bypasses our API's owner check and names Alice's keys directly: Redis refuses.
        with pytest.raises(Forbidden):
            await bob.get(ref.key)
        with pytest.raises(Forbidden):
            await bob.put(ref.key, b"overwritten", ttl_s=30)
        with pytest.raises(Forbidden):
            await bob.delete(ref.key)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await bob.client.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            await bob.client.keys("*")
        assert await alice.for_device(alice_id).get(ref) == b"alice's KV"
        # Bob's own namespace works.
        bob_ref = await bob.for_device(bob_id).put(b"bob's KV", ttl_s=30)
        assert await bob.for_device(bob_id).get(bob_ref) == b"bob's KV"
    finally:
        await alice.close()
        await bob.close()


async def test_device_commands_cover_what_the_store_sends(
    redis_acl: AclRedis, admin: redis_async.Redis, ns: str
) -> None:
    dev = f"dev-{ns}"
    pw = secrets.token_urlsafe(12)
    await admin.execute_command("ACL", "SETUSER", redis_device_user(dev), *redis_device_acl(dev, pw, prefix=f"{ns}:"))
    store = RedisStore(redis_acl.url, username=redis_device_user(dev), password=pw, prefix=f"{ns}:")
    try:
        blobs = store.for_device(dev)
        ref = await blobs.put(b"x" * 10, ttl_s=30)
        await store.head(ref.key)
        await store.ttl(ref.key)
        await blobs.get(ref)
        sha = await store.put_document("doc")
        await store.put_document("doc")  # the refresh path (PEXPIRE)
        await store.get_document(sha)
        await blobs.delete(ref)
        assert await store.ping()
        log = await admin.execute_command("ACL", "LOG")
        denied = [e for e in log if redis_device_user(dev).encode() in str(e).encode()]
        assert denied == [], f"the store sent commands its ACL does not allow: {denied}"
        assert set(REDIS_DEVICE_COMMANDS) >= {"get", "set", "strlen", "exists", "pttl", "pexpire", "del"}
    finally:
        await store.close()


async def test_credentials_from_url_and_settings(redis_acl: AclRedis, env_clean: pytest.MonkeyPatch, ns: str) -> None:
    port = redis_acl.url.rsplit(":", 1)[1].split("/")[0]
    pw = redis_acl.admin_password
    from_url = RedisStore(f"redis://default:{pw}@127.0.0.1:{port}/0", prefix=f"{ns}:")
    assert pw not in from_url.url and pw not in repr(from_url.url)
    settings = Settings(redis_password=SecretStr(pw), cloud_store_url=SecretStr(f"redis://127.0.0.1:{port}/0"))
    from_settings = open_store(settings.cloud_store_url.get_secret_value(), settings=settings, prefix=f"{ns}:")
    # Explicit settings win over a wrong password in the URL.
    override = open_store(f"redis://default:wrong@127.0.0.1:{port}/0", settings=settings, prefix=f"{ns}:")
    wrong = RedisStore(f"redis://127.0.0.1:{port}/0", password="wrong", prefix=f"{ns}:")
    anonymous = RedisStore(f"redis://127.0.0.1:{port}/0", prefix=f"{ns}:")
    try:
        for store in (from_url, from_settings, override):
            ref = await store.for_device("d").put(b"ok", ttl_s=10)
            assert await store.for_device("d").get(ref) == b"ok"
        for store in (wrong, anonymous):
            assert not await store.ping()
            with pytest.raises(Forbidden):
                await store.for_device("d").put(b"x", ttl_s=10)
    finally:
        for store in (from_url, from_settings, override, wrong, anonymous):
            await store.close()


def test_open_store_by_scheme(env_clean: pytest.MonkeyPatch) -> None:
    settings = Settings(store_ttl_s=42, max_blob_bytes=1000, max_document_bytes=100, namespace="nsx")
    mem = open_store("memory://shared-x", settings=settings)
    assert isinstance(mem, MemoryStore) and mem.default_ttl_s == 42 and mem.max_blob_bytes == 1000
    assert mem.prefix == "nsx:scout:" and mem.max_document_bytes == 100
    assert open_store("memory://shared-x", settings=settings).data is mem.data  # same name, same data
    assert open_store("memory://", settings=settings).data is not mem.data
    rs = open_store("rediss://u:p@example.invalid:6380/2", settings=settings)
    assert isinstance(rs, RedisStore)
    kwargs = rs.client.connection_pool.connection_kwargs
    assert kwargs["host"] == "example.invalid" and kwargs["port"] == 6380 and kwargs["db"] == 2
    assert kwargs["username"] == "u" and kwargs["password"] == "p"
    assert rs.url == "rediss://u:***@example.invalid:6380/2"
    from scout_runtime.errors import BadRequest

    with pytest.raises(BadRequest):
        open_store("s3://bucket", settings=settings)
