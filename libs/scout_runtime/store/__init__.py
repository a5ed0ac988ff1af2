"""Blob staging: KV blobs and documents in Redis (or in memory), chosen by URL, verified on every read.

URL schemes (as in LMCache's remote backends): ``redis://[user:pass@]host:port/db``, ``rediss://…`` (TLS), and
``memory://[name][?rate_mbit=R]`` (the embedded default: roles in one process that open the same name share one store;
an empty name is a private store).

``?rate_mbit=R`` makes a memory store stand in for the uplink as well (`scout demo`): every write through it is
paced at R Mbit/s (`PacedUplink`: asynchronous sleeps, chunk by chunk, never blocking the event loop) before the
entry appears, as a ``SET`` into a remote Redis behind a shaped link would be. Why a store option rather than a
pacing step in the roles: in a deployment the quantizer's upload *is* the uplink transfer (the pod's shaped
interface paces it), so the roles time and report it without knowing about the link; pacing the store keeps the
role code identical in the embedded and the real deployment. The rate belongs to the URL a role opens, not to the
data: ``memory://cloud?rate_mbit=20`` (the edge roles' view, across the uplink) and ``memory://cloud`` (the cloud
decoder's own view) are one store. Reads, TTL refreshes and deletes are not paced (the cloud side's own traffic,
or a few bytes of control). Paced stores of one name and rate share one link, so concurrent uploads share its rate.

Layout of one entry under key ``K``: the content at ``K`` and its metadata (`BlobMeta`: size and SHA-256, JSON) at
``K:meta``, both with the same TTL. Why two keys, written content first and metadata second: a reader starts from
the metadata, so a writer that dies between the two writes (or a reader racing a writer) leaves an entry the reader
reports as missing, never half-read; the metadata also lets a reader refuse an oversized entry before reading a
single content byte (`BlobTooLarge`), and lets it verify what it read (`BlobCorrupt` for a wrong size or hash).
Every key gets a TTL (``put`` refuses none): a request that dies mid-way leaves nothing behind for long.

Namespaces and isolation: blobs live under ``<prefix>blob:<device_id>:<sha256>``, documents (content-addressed,
shared) under ``<prefix>doc:<sha256>``. `DeviceBlobs` (``store.for_device(id)``) is what edge code gets: it derives
every key from its own device id and the content hash, so through this API a device can neither name another
device's blob (reading a foreign key raises `Forbidden`) nor overwrite anything but its own blob of the same bytes.
That is a check in our code; for isolation that holds against a device running other code, give each device its own
Redis ACL user restricted to its key pattern (`redis_device_acl`), and Redis itself refuses the rest (``NOPERM``,
raised here as `Forbidden`). Documents are readable and writable by every device, but they are verified against
their address on every read, so a device can at worst make a document unreadable (`BlobCorrupt`), never change it.

Layout: `scout_runtime.store.base` (the interface, `BlobMeta`, `BlobRef`, `DeviceBlobs`), `.memory` (`MemoryStore`),
`.pacing` (`PacedUplink`), `.redis` (`RedisStore` and the ACL helpers); `open_store` (here) picks one by URL. Import
from this package: every public name is re-exported here.
"""

from __future__ import annotations

from typing import Any

from scout_runtime.errors import BadRequest
from scout_runtime.settings import Settings
from scout_runtime.store.base import (
    DEFAULT_PREFIX,
    MAX_META_BYTES,
    META_SUFFIX,
    BlobMeta,
    BlobRef,
    BlobStore,
    DeviceBlobs,
    sha256_hex,
)
from scout_runtime.store.memory import MEMORY_URL_OPTIONS, MemoryStore, parse_memory_url
from scout_runtime.store.pacing import PacedUplink
from scout_runtime.store.redis import REDIS_DEVICE_COMMANDS, RedisStore, redis_device_acl, redis_device_user

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_META_BYTES",
    "MEMORY_URL_OPTIONS",
    "META_SUFFIX",
    "REDIS_DEVICE_COMMANDS",
    "BlobMeta",
    "BlobRef",
    "BlobStore",
    "DeviceBlobs",
    "MemoryStore",
    "PacedUplink",
    "RedisStore",
    "open_store",
    "parse_memory_url",
    "redis_device_acl",
    "redis_device_user",
    "sha256_hex",
]


def open_store(
    url: str,
    *,
    settings: Settings | None = None,
    prefix: str | None = None,
    ttl_s: int | None = None,
    max_blob_bytes: int | None = None,
    username: str | None = None,
    password: str | None = None,
) -> BlobStore:
    """The store a URL names (``redis://``, ``rediss://``, ``memory://``); credentials and limits from settings
    unless given (explicit credentials win over the URL's)."""
    settings = settings or Settings()
    scheme = url.split("://", 1)[0] if "://" in url else ""
    common: dict[str, Any] = {
        "prefix": settings.key_prefix() if prefix is None else prefix,
        "default_ttl_s": settings.store_ttl_s if ttl_s is None else ttl_s,
        "max_blob_bytes": settings.max_blob_bytes if max_blob_bytes is None else max_blob_bytes,
        "max_document_bytes": settings.max_document_bytes,
    }
    if scheme == "memory":
        name, rate_bps = parse_memory_url(url)
        return MemoryStore(name, rate_bps=rate_bps, **common)
    if scheme in ("redis", "rediss"):
        if password is None and settings.redis_password is not None:
            password = settings.redis_password.get_secret_value()
        return RedisStore(
            url,
            username=username if username is not None else settings.redis_username,
            password=password,
            tls_ca=str(settings.redis_tls_ca) if settings.redis_tls_ca else None,
            **common,
        )
    raise BadRequest(f"unknown store URL scheme {scheme!r}: use redis://, rediss:// or memory://")
