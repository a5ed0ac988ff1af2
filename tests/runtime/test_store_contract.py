"""The blob-store contract, run against the in-memory store and a real redis-server alike."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import redis.asyncio as redis_async
from runtime_helpers import corrupt

from scout_runtime.errors import BadRequest, BlobCorrupt, BlobMissing, BlobTooLarge, Forbidden, TooLarge
from scout_runtime.store import META_SUFFIX, BlobMeta, BlobRef, BlobStore, MemoryStore


async def test_round_trip_and_metadata(store: BlobStore) -> None:
    data = bytes(range(256)) * 1000
    key = store.blob_key("dev-1", hashlib.sha256(data).hexdigest())
    meta = await store.put(key, data, ttl_s=30)
    assert meta == BlobMeta(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert await store.head(key) == meta
    assert await store.get(key) == data
    empty_key = store.blob_key("dev-1", hashlib.sha256(b"").hexdigest())
    await store.put(empty_key, b"")
    assert await store.get(empty_key) == b""


async def test_every_key_has_a_ttl(store: BlobStore, raw_redis: redis_async.Redis) -> None:
    ref = await store.for_device("dev-1").put(b"kv bytes", ttl_s=20)
    ttl = await store.ttl(ref.key)
    assert ttl is not None and 15 < ttl <= 20
    sha = await store.put_document("a document", ttl_s=40)
    doc_ttl = await store.ttl(store.document_key(sha))
    assert doc_ttl is not None and 35 < doc_ttl <= 40
    if not isinstance(store, MemoryStore):  # both the content and the metadata key expire, checked in Redis itself
        for key in (ref.key, ref.key + META_SUFFIX):
            assert 15_000 < await raw_redis.pttl(key) <= 20_000
    with pytest.raises(BadRequest):
        await store.put(ref.key, b"x", ttl_s=0)


async def test_entries_expire(store: BlobStore) -> None:
    ref = await store.for_device("dev-1").put(b"short-lived", ttl_s=0.15)
    assert await store.get(ref.key) == b"short-lived"
    await asyncio.sleep(0.3)
    with pytest.raises(BlobMissing):
        await store.get(ref.key)
    assert await store.ttl(ref.key) is None


async def test_missing_blob(store: BlobStore) -> None:
    key = store.blob_key("dev-1", "0" * 64)
    with pytest.raises(BlobMissing):
        await store.get(key)
    with pytest.raises(BlobMissing):
        await store.head(key)


async def test_half_written_entry_reads_as_missing(store: BlobStore, raw_redis: redis_async.Redis) -> None:
    """Content written but metadata not yet (a writer died between the two writes): never half-read."""
    data = b"content without metadata"
    key = store.blob_key("dev-1", hashlib.sha256(data).hexdigest())
    await store.put(key, data)
    meta_key = key + META_SUFFIX
    if isinstance(store, MemoryStore):
        del store.raw[meta_key]
    else:
        await raw_redis.delete(meta_key)
    with pytest.raises(BlobMissing):
        await store.get(key)


async def test_corrupt_content_is_detected(store: BlobStore, raw_redis: redis_async.Redis) -> None:
    data = b"A" * 4096
    ref = await store.for_device("dev-1").put(data)
    write = corrupt(store, raw_redis)
    await write(ref.key, b"A" * 4095 + b"B")  # same size, one byte flipped: only the checksum can tell
    with pytest.raises(BlobCorrupt, match="SHA-256"):
        await store.get(ref.key)
    await write(ref.key, b"A" * 100)  # truncated
    with pytest.raises(BlobCorrupt):
        await store.get(ref.key)


async def test_corrupt_metadata_is_detected(store: BlobStore, raw_redis: redis_async.Redis) -> None:
    ref = await store.for_device("dev-1").put(b"payload")
    write = corrupt(store, raw_redis)
    for bad in (b"not json", b'{"schema_version": 2, "size": 7, "sha256": "' + b"0" * 64 + b'"}', b"x" * 5000):
        await write(ref.key + META_SUFFIX, bad)
        with pytest.raises(BlobCorrupt):
            await store.get(ref.key)


async def test_oversized_blob_is_refused_before_reading(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"z" * 100_000
    ref = await store.for_device("dev-1").put(data)
    reads: list[str] = []
    real_get = store._get

    async def counting_get(key: str) -> bytes | None:
        reads.append(key)
        return await real_get(key)

    monkeypatch.setattr(store, "_get", counting_get)
    with pytest.raises(BlobTooLarge):
        await store.get(ref.key, max_bytes=99_999)
    assert reads == [], "the size must be checked from metadata, before any content is read"
    assert await store.get(ref.key, max_bytes=100_000) == data
    assert reads == [ref.key]


async def test_put_over_the_limit_is_refused(store: BlobStore) -> None:
    with pytest.raises(TooLarge):
        await store.for_device("dev-1").put(b"x" * (store.max_blob_bytes + 1))


async def test_devices_are_isolated(store: BlobStore) -> None:
    alice, bob = store.for_device("alice"), store.for_device("bob")
    ref = await alice.put(b"alice's KV")
    assert ref.key == store.blob_key("alice", hashlib.sha256(b"alice's KV").hexdigest())
    assert await alice.get(ref) == b"alice's KV"
    assert await alice.get(ref.sha256 and ref.key) == b"alice's KV"
    with pytest.raises(Forbidden):
        await bob.get(ref)
    with pytest.raises(Forbidden):
        await bob.get(ref.key)
    with pytest.raises(Forbidden):
        await bob.delete(ref)
    # Bob storing the same bytes gets his own key; Alice's entry is untouched.
    bob_ref = await bob.put(b"alice's KV")
    assert bob_ref.key != ref.key and bob_ref.sha256 == ref.sha256
    # A reference whose hash does not match its key is refused.
    with pytest.raises(BadRequest):
        await alice.get(BlobRef(key=ref.key, size=ref.size, sha256="1" * 64))
    await alice.delete(ref)
    with pytest.raises(BlobMissing):
        await alice.get(ref)
    assert await bob.get(bob_ref) == b"alice's KV"


async def test_service_side_blob_access_checks_the_owner(store: BlobStore) -> None:
    ref = await store.put_blob("dev-7", b"blob")
    assert await store.get_blob(ref.key, device_id="dev-7") == b"blob"
    with pytest.raises(Forbidden):
        await store.get_blob(ref.key, device_id="dev-8")
    with pytest.raises(BadRequest):
        await store.get_blob("scout:blob:dev-7:nothex", device_id="dev-7")


async def test_blob_content_must_match_its_address(store: BlobStore) -> None:
    """Even with consistent metadata, a blob key's content must hash to the key (a forged entry)."""
    key = store.blob_key("dev-1", "a" * 64)
    await store.put(key, b"something else entirely")
    with pytest.raises(BlobCorrupt):
        await store.get_blob(key, device_id="dev-1")


async def test_keys_outside_the_namespace_are_refused(store: BlobStore) -> None:
    with pytest.raises(Forbidden):
        await store.get("other:blob:dev:" + "0" * 64)
    with pytest.raises(BadRequest):
        await store.put(store.prefix + "has space", b"x")
    with pytest.raises(BadRequest):
        await store.put(store.prefix + "blob:x" + META_SUFFIX, b"x")
    with pytest.raises(BadRequest):
        store.for_device("bad.device")
    with pytest.raises(BadRequest):
        store.blob_key("dev", "XYZ")


async def test_documents_are_content_addressed(store: BlobStore, raw_redis: redis_async.Redis) -> None:
    text = "Scout ships positions, not caches. — ünïcode ✓"
    sha = await store.put_document(text)
    assert sha == hashlib.sha256(text.encode()).hexdigest()
    assert await store.put_document(text) == sha  # stored once
    assert await store.get_document(sha) == text
    with pytest.raises(BlobMissing):
        await store.get_document("f" * 64)
    with pytest.raises(BadRequest):
        await store.get_document("../etc/passwd")
    with pytest.raises(BlobTooLarge):
        await store.get_document(sha, max_bytes=10)
    # Tampering is detected; putting the document again repairs it.
    write = corrupt(store, raw_redis)
    await write(store.document_key(sha), b"X" * len(text.encode()))
    with pytest.raises(BlobCorrupt):
        await store.get_document(sha)
    assert await store.put_document(text) == sha
    assert await store.get_document(sha) == text


async def test_concurrent_writers_of_one_blob(store: BlobStore) -> None:
    dev = store.for_device("dev-1")
    data = b"same bytes" * 1000
    refs = await asyncio.gather(*(dev.put(data) for _ in range(10)))
    assert len({r.key for r in refs}) == 1
    results = await asyncio.gather(*(dev.get(refs[0]) for _ in range(10)))
    assert all(r == data for r in results)


async def test_ping(store: BlobStore) -> None:
    assert await store.ping()


async def test_document_size_limit(store: BlobStore) -> None:
    limit = store.max_document_bytes
    sha = await store.put_document("é" * (limit // 2))  # exactly the limit in UTF-8 bytes
    assert len(await store.get_document(sha)) == limit // 2
    with pytest.raises(TooLarge):
        await store.put_document("x" * (limit + 1))
    with pytest.raises(BadRequest):
        await store.put_document(b"bytes are not a document")  # type: ignore[arg-type]
