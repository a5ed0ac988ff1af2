"""The store interface: entries with metadata and TTLs, the blob and document namespaces, and a device's
view (`DeviceBlobs`). Layout, verification and isolation are described in the package docstring."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scout_runtime.errors import BadRequest, BlobCorrupt, BlobMissing, BlobTooLarge, Forbidden, TooLarge
from scout_runtime.limits import DEFAULT_LIMITS
from scout_runtime.subjects import validate_device_id

META_SUFFIX = ":meta"
MAX_META_BYTES = 1024
DEFAULT_PREFIX = "scout:"
_SHA_RE = re.compile(r"[0-9a-f]{64}")
PREFIX_RE = re.compile(r"(?:[A-Za-z0-9_.-]+:)+")
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
        if not PREFIX_RE.fullmatch(prefix):
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
