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
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from scout_runtime.errors import (
    BadRequest,
    BlobCorrupt,
    BlobMissing,
    BlobTooLarge,
    BusClosed,
    Forbidden,
    ScoutError,
    Timeout,
    TooLarge,
)
from scout_runtime.limits import DEFAULT_LIMITS
from scout_runtime.settings import Settings, redact_url
from scout_runtime.subjects import validate_device_id

__all__ = [
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

META_SUFFIX = ":meta"
MAX_META_BYTES = 1024
DEFAULT_PREFIX = "scout:"
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_PREFIX_RE = re.compile(r"(?:[A-Za-z0-9_.-]+:)+")
_KEY_RE = re.compile(r"[A-Za-z0-9_:.-]{1,512}")


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256: the address of documents and blobs, and the checksum every read verifies."""
    return hashlib.sha256(data).hexdigest()


class BlobMeta(BaseModel):
    """What is stored next to each entry (it crosses processes, so it is a versioned pydantic model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class BlobRef(BaseModel):
    """Where a staged blob is and what it must be: exactly what a `DecodeRequest` carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def _check_sha(value: str, what: str = "sha256") -> str:
    if not isinstance(value, str) or not _SHA_RE.fullmatch(value):
        raise BadRequest(f"{what} must be 64 lowercase hex digits")
    return value


class BlobStore(ABC):
    """The store interface: raw entries (`put`/`get`) plus the blob and document namespaces on top.

    `put`/`get` are the trusted (service-side) API over any key under the store's prefix; edge code should get
    a `DeviceBlobs` from `for_device`.
    """

    def __init__(
        self,
        *,
        prefix: str = DEFAULT_PREFIX,
        default_ttl_s: int = 600,
        max_blob_bytes: int = DEFAULT_LIMITS.max_blob_bytes,
        max_document_bytes: int = DEFAULT_LIMITS.max_document_bytes,
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"store prefix must be ':'-terminated parts of [A-Za-z0-9_.-], got {prefix!r}")
        if default_ttl_s < 1:
            raise ValueError("default_ttl_s must be >= 1")
        self.prefix = prefix
        self.default_ttl_s = default_ttl_s
        self.max_blob_bytes = max_blob_bytes
        self.max_document_bytes = max_document_bytes

    # --- keys ---
    def blob_key(self, device_id: str, sha256: str) -> str:
        """``<prefix>blob:<device_id>:<sha256>``: per-device namespace, content-addressed."""
        return f"{self.prefix}blob:{validate_device_id(device_id)}:{_check_sha(sha256)}"

    def document_key(self, sha256: str) -> str:
        """``<prefix>doc:<sha256>``: documents are shared by every device and stored once."""
        return f"{self.prefix}doc:{_check_sha(sha256)}"

    def parse_blob_key(self, key: str) -> tuple[str, str]:
        """(device_id, sha256) of a blob key of this store; `BadRequest` for anything else."""
        m = re.fullmatch(rf"{re.escape(self.prefix)}blob:([A-Za-z0-9_-]{{1,64}}):([0-9a-f]{{64}})", key or "")
        if not m:
            raise BadRequest(f"not a blob key of this store: {str(key)[:120]!r}")
        return m.group(1), m.group(2)

    def _check_key(self, key: str) -> str:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or key.endswith(META_SUFFIX):
            raise BadRequest(f"invalid store key {str(key)[:120]!r}")
        if not key.startswith(self.prefix):
            raise Forbidden(f"key {key[:120]!r} is outside this store's namespace {self.prefix!r}")
        return key

    def _ttl_ms(self, ttl_s: float | None) -> int:
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if not ttl > 0:
            raise BadRequest("every staged key needs a positive TTL")
        return max(1, int(ttl * 1000))

    # --- raw entries ---
    async def put(self, key: str, data: bytes, ttl_s: float | None = None) -> BlobMeta:
        """Store ``data`` under ``key``: content first, then metadata, both expiring after ``ttl_s``."""
        self._check_key(key)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadRequest(f"blob data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > self.max_blob_bytes:
            raise TooLarge(f"blob of {len(data)} bytes exceeds the limit of {self.max_blob_bytes}")
        meta = BlobMeta(size=len(data), sha256=sha256_hex(data))
        ttl_ms = self._ttl_ms(ttl_s)
        await self._set(key, data, ttl_ms)
        await self._set(key + META_SUFFIX, meta.model_dump_json().encode(), ttl_ms)
        return meta

    async def head(self, key: str) -> BlobMeta:
        """The entry's metadata, checked against the stored content's length; `BlobMissing` if incomplete."""
        meta, _ = await self._head(self._check_key(key))
        return meta

    async def _head(self, key: str) -> tuple[BlobMeta, int]:
        raw_meta, length = await self._meta_and_length(key)
        if raw_meta is None or length is None:
            raise BlobMissing(f"no complete entry under {key!r} (never written, expired, or half-written)")
        if len(raw_meta) > MAX_META_BYTES:
            raise BlobCorrupt(f"metadata of {key!r} is {len(raw_meta)} bytes")
        try:
            meta = BlobMeta.model_validate_json(raw_meta)
        except ValueError:
            raise BlobCorrupt(f"metadata of {key!r} is unreadable") from None
        if meta.size != length:
            raise BlobCorrupt(f"{key!r} holds {length} bytes but its metadata says {meta.size}")
        return meta, length

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The verified content: size checked against ``max_bytes`` before reading, SHA-256 checked after."""
        key = self._check_key(key)
        limit = self.max_blob_bytes if max_bytes is None else max_bytes
        meta, _ = await self._head(key)
        if meta.size > limit:
            raise BlobTooLarge(f"{key!r} holds {meta.size} bytes, more than the {limit} accepted")
        data = await self._get(key)
        if data is None:
            raise BlobMissing(f"{key!r} expired or was deleted while being read")
        if len(data) != meta.size:
            raise BlobCorrupt(f"{key!r} changed size while being read ({len(data)} != {meta.size})")
        if sha256_hex(data) != meta.sha256:
            raise BlobCorrupt(f"{key!r} does not match its SHA-256 (corrupted or overwritten)")
        return data

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires (the earlier of content and metadata); None if it does not exist."""
        key = self._check_key(key)
        a = await self._pttl(key)
        b = await self._pttl(key + META_SUFFIX)
        if a is None or b is None:
            return None
        return min(a, b) / 1000.0

    async def delete(self, key: str) -> None:
        key = self._check_key(key)
        await self._delete(key + META_SUFFIX, key)

    # --- namespaces ---
    def for_device(self, device_id: str) -> DeviceBlobs:
        """The API a device (edge code) gets: only its own blobs, keys derived from the content."""
        return DeviceBlobs(self, validate_device_id(device_id))

    async def put_blob(self, device_id: str, data: bytes, ttl_s: float | None = None) -> BlobRef:
        """Stage ``data`` as ``device_id``'s blob under its content address; the reference goes into the message."""
        key = self.blob_key(device_id, sha256_hex(bytes(data)))
        meta = await self.put(key, data, ttl_s)
        return BlobRef(key=key, size=meta.size, sha256=meta.sha256)

    async def get_blob(self, ref: BlobRef | str, *, device_id: str, max_bytes: int | None = None) -> bytes:
        """A blob of ``device_id`` by reference or key; `Forbidden` if the key names another device's blob.

        The content must hash to the address in the key, whatever the metadata says.
        """
        key = ref.key if isinstance(ref, BlobRef) else ref
        owner, sha = self.parse_blob_key(key)
        if owner != device_id:
            raise Forbidden(f"device {device_id!r} may not access blobs of device {owner!r}")
        if isinstance(ref, BlobRef) and ref.sha256 != sha:
            raise BadRequest("blob reference sha256 does not match its key")
        data = await self.get(key, max_bytes)
        if sha256_hex(data) != sha:
            raise BlobCorrupt(f"{key!r} does not hold the content its address names")
        return data

    async def put_document(self, text: str, ttl_s: float | None = None) -> str:
        """Store a document once (content-addressed); returns its SHA-256 (the ``document_ref``)."""
        if not isinstance(text, str):
            raise BadRequest("a document must be text")
        data = text.encode("utf-8")
        if len(data) > self.max_document_bytes:
            raise TooLarge(f"document of {len(data)} bytes exceeds the limit of {self.max_document_bytes}")
        sha = sha256_hex(data)
        key = self.document_key(sha)
        # Already there and intact (e.g. sent by another device): refresh its TTL instead of uploading it again,
        # since the uplink is the scarce direction. Missing or tampered: (re)write it.
        try:
            await self.get_document(sha, max_bytes=len(data))
        except (BlobMissing, BlobCorrupt, BlobTooLarge):
            await self.put(key, data, ttl_s)
            return sha
        await self._expire(key, self._ttl_ms(ttl_s))
        await self._expire(key + META_SUFFIX, self._ttl_ms(ttl_s))
        return sha

    async def get_document(self, sha256: str, max_bytes: int | None = None) -> str:
        """The document with this SHA-256, verified against its address."""
        key = self.document_key(sha256)
        data = await self.get(key, self.max_document_bytes if max_bytes is None else max_bytes)
        if sha256_hex(data) != sha256:
            raise BlobCorrupt(f"document {sha256[:12]}… does not hash to its address")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise BlobCorrupt(f"document {sha256[:12]}… is not UTF-8") from None

    # --- backend primitives ---
    @abstractmethod
    async def _set(self, key: str, data: bytes, ttl_ms: int) -> None: ...

    @abstractmethod
    async def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def _meta_and_length(self, key: str) -> tuple[bytes | None, int | None]:
        """(metadata bytes or None, content length or None if the content key does not exist)."""

    @abstractmethod
    async def _pttl(self, key: str) -> int | None: ...

    @abstractmethod
    async def _expire(self, key: str, ttl_ms: int) -> None: ...

    @abstractmethod
    async def _delete(self, *keys: str) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """Whether the backend answers (readiness)."""

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> BlobStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass(frozen=True)
class DeviceBlobs:
    """One device's view of the store: blobs under its own namespace only (see the module docstring)."""

    store: BlobStore
    device_id: str

    async def put(self, data: bytes, ttl_s: float | None = None) -> BlobRef:
        """Stage a blob; its key is derived from this device and the content hash (nothing else can be named)."""
        return await self.store.put_blob(self.device_id, data, ttl_s)

    async def get(self, ref: BlobRef | str, max_bytes: int | None = None) -> bytes:
        return await self.store.get_blob(ref, device_id=self.device_id, max_bytes=max_bytes)

    async def delete(self, ref: BlobRef | str) -> None:
        key = ref.key if isinstance(ref, BlobRef) else ref
        owner, _ = self.store.parse_blob_key(key)
        if owner != self.device_id:
            raise Forbidden(f"device {self.device_id!r} may not delete blobs of device {owner!r}")
        await self.store.delete(key)

    async def put_document(self, text: str, ttl_s: float | None = None) -> str:
        return await self.store.put_document(text, ttl_s)

    async def get_document(self, sha256: str, max_bytes: int | None = None) -> str:
        return await self.store.get_document(sha256, max_bytes)


# --- memory --------------------------------------------------------------------------------------------------
class _MemoryData:
    """Entries of one ``memory://`` store: key -> (value, expiry on the monotonic clock)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[bytes, float]] = {}

    def live(self, key: str) -> bytes | None:
        item = self.entries.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self.entries[key]
            return None
        return item[0]

    def purge(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, exp) in self.entries.items() if exp <= now]:
            del self.entries[key]


_MEMORY: dict[str, _MemoryData] = {}


class PacedUplink:
    """A simulated uplink: bytes cross it at ``rate_bps`` bits per second, one chunk at a time.

    Each chunk reserves the next ``chunk_bytes * 8 / rate_bps`` seconds of the link (after whatever is already
    reserved), then the sender sleeps (``asyncio.sleep``) until its chunk has crossed. So one transfer of N bytes
    takes N * 8 / rate (sleep overshoot does not accumulate: a transfer's chunks are scheduled back to back), and
    concurrent transfers interleave their chunks and share the rate, as on a real link. The synchronous
    `scout.channel.link.PacedLink` is the same idea for code without an event loop.
    """

    def __init__(self, rate_bps: float, *, chunk_bytes: int = 64 * 1024) -> None:
        if not (isinstance(rate_bps, int | float) and math.isfinite(rate_bps) and rate_bps > 0):
            raise ValueError(f"uplink rate must be a positive, finite number of bit/s, got {rate_bps!r}")
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be >= 1")
        self.rate_bps = float(rate_bps)
        self.chunk_bytes = chunk_bytes
        self._free_at = 0.0  # monotonic time at which everything reserved so far has crossed
        self._lock = threading.Lock()  # reservations only; stores may be shared by roles on other threads' loops

    def transfer_time(self, nbytes: int) -> float:
        """Seconds ``nbytes`` take on an idle link."""
        return nbytes * 8 / self.rate_bps

    async def send(self, nbytes: int) -> float:
        """Wait until ``nbytes`` have crossed the link; returns the seconds it took."""
        start = time.monotonic()
        left, first = nbytes, True
        while left > 0:
            step = min(self.chunk_bytes, left)
            with self._lock:
                now = time.monotonic()
                begin = max(now, self._free_at) if first else self._free_at
                self._free_at = end = begin + self.transfer_time(step)
            first = False
            left -= step
            await asyncio.sleep(max(0.0, end - now))
        return time.monotonic() - start


_UPLINKS: dict[tuple[str, float], PacedUplink] = {}
MEMORY_URL_OPTIONS = ("rate_mbit",)


def parse_memory_url(url: str) -> tuple[str, float | None]:
    """(name, uplink rate in bit/s or None) of ``memory://[name][?rate_mbit=R]``; `BadRequest` names what is wrong."""
    scheme, sep, rest = url.partition("://")
    if scheme != "memory" or not sep:
        raise BadRequest(f"not a memory:// store URL: {url[:120]!r}")
    path, _, query = rest.partition("?")
    rate_bps: float | None = None
    for part in query.split("&") if query else []:
        key, _, value = part.partition("=")
        if key not in MEMORY_URL_OPTIONS:
            raise BadRequest(f"unknown memory:// store option {key!r}; known: {', '.join(MEMORY_URL_OPTIONS)}")
        try:
            mbit = float(value)
        except ValueError:
            mbit = math.nan
        if not (math.isfinite(mbit) and mbit > 0):
            raise BadRequest(f"memory:// store option rate_mbit must be a positive number of Mbit/s, got {value!r}")
        rate_bps = mbit * 1e6
    return path.strip("/"), rate_bps


class MemoryStore(BlobStore):
    """The embedded store: a dict with expiry times. ``memory://name`` stores of one process share their data.

    With ``rate_bps`` every write first crosses a `PacedUplink` at that rate (see the module docstring); named
    stores share the link of their name and rate, a private store has its own.
    """

    def __init__(
        self, name: str = "", *, rate_bps: float | None = None, chunk_bytes: int = 64 * 1024, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.name = name
        if name:
            self.data = _MEMORY.setdefault(name, _MemoryData())
        else:
            self.data = _MemoryData()
        self.uplink: PacedUplink | None = None
        self.url = f"memory://{name}"
        if rate_bps is not None:
            link = PacedUplink(rate_bps, chunk_bytes=chunk_bytes)  # validates the rate
            if name:
                link = _UPLINKS.setdefault((name, link.rate_bps), link)
            self.uplink = link
            self.url += f"?rate_mbit={link.rate_bps / 1e6:.12g}"

    @property
    def rate_bps(self) -> float | None:
        """The paced uplink's rate (bit/s), or None for an unpaced store."""
        return None if self.uplink is None else self.uplink.rate_bps

    @property
    def raw(self) -> dict[str, tuple[bytes, float]]:
        """The underlying entries (key -> (bytes, monotonic expiry)), for tests and debugging that must bypass the
        checks, e.g. to simulate corruption. Production code never touches this."""
        return self.data.entries

    async def _set(self, key: str, data: bytes, ttl_ms: int) -> None:
        if self.uplink is not None:
            await self.uplink.send(len(data))  # the entry exists once its bytes have crossed the link
        self.data.purge()
        self.data.entries[key] = (data, time.monotonic() + ttl_ms / 1000.0)

    async def _get(self, key: str) -> bytes | None:
        return self.data.live(key)

    async def _meta_and_length(self, key: str) -> tuple[bytes | None, int | None]:
        content = self.data.live(key)
        return self.data.live(key + META_SUFFIX), None if content is None else len(content)

    async def _pttl(self, key: str) -> int | None:
        if self.data.live(key) is None:
            return None
        return max(0, int((self.data.entries[key][1] - time.monotonic()) * 1000))

    async def _expire(self, key: str, ttl_ms: int) -> None:
        value = self.data.live(key)
        if value is not None:
            self.data.entries[key] = (value, time.monotonic() + ttl_ms / 1000.0)

    async def _delete(self, *keys: str) -> None:
        for key in keys:
            self.data.entries.pop(key, None)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


# --- redis ---------------------------------------------------------------------------------------------------
class RedisStore(BlobStore):
    """`BlobStore` over redis-py's asyncio client (``redis://`` or ``rediss://``)."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        socket_timeout_s: float = 30.0,
        retries: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        import redis.asyncio as redis
        import redis.exceptions as rex
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialWithJitterBackoff

        parts = urlsplit(url)
        options: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 6379,
            "db": int(parts.path.lstrip("/") or 0),
            "username": username if username is not None else (unquote(parts.username) if parts.username else None),
            "password": password if password is not None else (unquote(parts.password) if parts.password else None),
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": 5.0,
            "health_check_interval": 30,
            # A few quick retries ride out a dropped connection; redis-py's default (seconds of backoff, also on
            # refused credentials, which it counts as connection errors) would stall a request far past its deadline.
            "retry": Retry(
                ExponentialWithJitterBackoff(base=0.05, cap=0.5),
                retries=retries,
                supported_errors=(rex.ConnectionError, rex.TimeoutError),
            ),
        }
        if parts.scheme == "rediss":
            options["ssl"] = True
            if tls_ca:
                options["ssl_ca_certs"] = tls_ca
        self.url = redact_url(url)
        self.client = redis.Redis(**options)

    async def _run(self, what: str, coro: Any) -> Any:
        import redis.exceptions as rex

        try:
            return await coro
        except rex.NoPermissionError:
            raise Forbidden(f"Redis refused {what} (ACL)") from None
        except rex.AuthenticationError:
            raise Forbidden(f"Redis refused the credentials for {self.url}") from None
        except rex.ResponseError as e:
            if str(e).startswith("NOPERM") or "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                raise Forbidden(f"Redis refused {what}: {str(e).split(' ', 1)[0]}") from None
            raise
        except rex.TimeoutError:
            raise Timeout(f"Redis did not answer {what} in time") from None
        except rex.ConnectionError as e:
            raise BusClosed(f"cannot reach Redis at {self.url}: {type(e).__name__}") from None

    async def _set(self, key: str, data: bytes, ttl_ms: int) -> None:
        await self._run("SET", self.client.set(key, data, px=ttl_ms))

    async def _get(self, key: str) -> bytes | None:
        value = await self._run("GET", self.client.get(key))
        return None if value is None else bytes(value)

    async def _meta_and_length(self, key: str) -> tuple[bytes | None, int | None]:
        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(key + META_SUFFIX)
                pipe.strlen(key)
                pipe.exists(key)
                return list(await pipe.execute())

        meta, length, exists = await self._run("GET/STRLEN", read())
        return (None if meta is None else bytes(meta)), (int(length) if exists else None)

    async def _pttl(self, key: str) -> int | None:
        value = int(await self._run("PTTL", self.client.pttl(key)))
        if value == -2:
            return None
        if value == -1:
            raise BlobCorrupt(f"{key!r} has no TTL")  # every key we write has one
        return value

    async def _expire(self, key: str, ttl_ms: int) -> None:
        await self._run("PEXPIRE", self.client.pexpire(key, ttl_ms))

    async def _delete(self, *keys: str) -> None:
        await self._run("DEL", self.client.delete(*keys))

    async def ping(self) -> bool:
        try:
            return bool(await self._run("PING", self.client.ping()))
        except ScoutError:
            return False

    async def close(self) -> None:
        await self.client.aclose()


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


# --- Redis ACL for per-device isolation ----------------------------------------------------------------------
REDIS_DEVICE_COMMANDS = ("get", "set", "strlen", "exists", "pttl", "pexpire", "del", "ping")
"""What `RedisStore` sends for a device (the ``+client|setinfo`` handshake redis-py tries is optional)."""


def redis_device_user(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The ACL user name of a device."""
    del prefix  # one user per device id; the prefix is part of the key patterns, not the name
    return f"scout-device-{validate_device_id(device_id)}"


def redis_device_acl(
    device_id: str, password: str, *, prefix: str = DEFAULT_PREFIX, documents: bool = True
) -> list[str]:
    """The ``ACL SETUSER <redis_device_user(device_id)> <rules…>`` rules confining a device to its own keys.

    The device may run only the commands the store needs, on ``<prefix>blob:<device_id>:*`` (its blobs and their
    metadata) and, with ``documents``, ``<prefix>doc:*`` (shared, content-verified documents); no pub/sub channels.
    Device ids and prefixes cannot contain glob characters (validated), so the patterns match literally.
    """
    validate_device_id(device_id)
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"invalid prefix {prefix!r}")
    if not password or any(c.isspace() for c in password):
        raise ValueError("the device password must be non-empty and contain no whitespace")
    rules = ["reset", "on", f">{password}", f"~{prefix}blob:{device_id}:*"]
    if documents:
        rules.append(f"~{prefix}doc:*")
    rules += ["resetchannels", "-@all", *(f"+{c}" for c in REDIS_DEVICE_COMMANDS)]
    return rules
