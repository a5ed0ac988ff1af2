"""The scout-kv blob checksums: XXH3-128 per payload chunk plus one over the canonical header (wire v2), and the
SHA-256 over header and payload that version-1 blobs carry (still read, no longer written).

Why XXH3 and not SHA-256: the checksum is there to catch corruption (a flipped bit in RAM, on disk, in a
store or a buggy proxy), not tampering: authenticity comes from TLS and the bus/store credentials, and an
attacker who can rewrite a blob can rewrite a SHA-256 next to it just as easily. SHA-256 runs at about
0.6 GB/s on one core and capped the whole codec there; XXH3 runs at memory speed (tens of GB/s), and its
128-bit digest makes an accidental collision astronomically unlikely. One digest per fixed-size chunk of the
payload (1 MiB by default; not one over the payload) lets a failure name the byte range, hence the tensors, that
are damaged, while the header stays small: 32 hex digits per MiB, not a named digest per tensor (a 30-layer INT8
cache has 181 tensors). Chunks are also the unit a streamed transfer can check as it arrives.

This module computes and compares digests; `scout.codec.wire` parses the claims, decides when they are checked
(after the structure, before any tensor is made) and raises.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

HEADER_KEY = "xxh3_header"
"""v2 metadata: hex XXH3-128 of the canonical header without this one field (so it covers the chunk digests)."""
CHUNK_KEY = "xxh3_chunk"
"""v2 metadata: the chunk size in bytes (decimal), within [MIN_CHUNK_BYTES, MAX_CHUNK_BYTES]."""
CHUNKS_KEY = "xxh3_chunks"
"""v2 metadata: the hex XXH3-128 of each consecutive payload chunk (the last may be short), concatenated."""
DEFAULT_CHUNK_BYTES = 1 << 20
MIN_CHUNK_BYTES = 1 << 12
"""The floor bounds a hostile blob's work: at most max_bytes / 4 KiB digests to check."""
MAX_CHUNK_BYTES = 1 << 30
SHA_KEY = "sha256"
"""v1 metadata: hex SHA-256 of (canonical header without this field) + payload."""

HEX128 = re.compile(r"[0-9a-f]{32}")
HEX128_RUN = re.compile(r"(?:[0-9a-f]{32})*")
HEX256 = re.compile(r"[0-9a-f]{64}")


def canonical(header: Mapping[str, Any]) -> bytes:
    """The header as hashed: sorted keys, no whitespace, ASCII, so a writer's JSON formatting does not matter."""
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def digest128(data: Any) -> str:
    """Hex XXH3-128 of a bytes-like object (any C-contiguous buffer)."""
    return xxhash.xxh3_128_hexdigest(data)


def without(header: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A shallow copy of `header` whose `__metadata__` lacks `key` (the form each checksum is computed over)."""
    meta = {k: v for k, v in header["__metadata__"].items() if k != key}
    return {**header, "__metadata__": meta}


def chunk_digests(parts: Iterable[Any], chunk: int) -> str:
    """The CHUNKS_KEY value for a payload given as consecutive bytes-like parts (the tensors, never joined):
    streamed XXH3-128 equals the one-shot digest of the same bytes, so a reader can hash each chunk in one call."""
    out: list[str] = []
    hasher, fill = xxhash.xxh3_128(), 0
    for part in parts:
        view = memoryview(part).cast("B")
        pos = 0
        while pos < view.nbytes:
            take = min(chunk - fill, view.nbytes - pos)
            hasher.update(view[pos : pos + take])
            fill, pos = fill + take, pos + take
            if fill == chunk:
                out.append(hasher.hexdigest())
                hasher, fill = xxhash.xxh3_128(), 0
    if fill:
        out.append(hasher.hexdigest())
    return "".join(out)


def header_digest(header: Mapping[str, Any]) -> str:
    """The HEADER_KEY value for a header (whatever HEADER_KEY it holds now is left out)."""
    return digest128(canonical(without(header, HEADER_KEY)))


def seal_v2(header: dict[str, Any], parts: Iterable[Any], chunk: int = DEFAULT_CHUNK_BYTES) -> None:
    """Write the v2 checksums into `header["__metadata__"]` in place, chunks first (the header digest covers them)."""
    meta = header["__metadata__"]
    meta.pop(HEADER_KEY, None)
    meta[CHUNK_KEY] = str(chunk)
    meta[CHUNKS_KEY] = chunk_digests(parts, chunk)
    meta[HEADER_KEY] = header_digest(header)


def sha256_v1(header: Mapping[str, Any], payload: Any) -> str:
    """The v1 checksum: SHA-256 of the canonical header without SHA_KEY, then the payload."""
    digest = hashlib.sha256(canonical(without(header, SHA_KEY)))
    digest.update(payload)
    return digest.hexdigest()


@dataclass(frozen=True)
class Claims:
    """The checksums a blob's metadata claims: v1's SHA-256, or v2's header digest, chunk size and chunk digests."""

    sha256: str = ""
    header: str = ""
    chunk: int = 0
    chunks: tuple[str, ...] = ()


def mismatch(
    header: Mapping[str, Any], payload: memoryview, spans: Sequence[tuple[int, int, str]], claims: Claims
) -> str:
    """What does not match its claim ("" when everything does): the header first, then each chunk, named by its
    byte range and the tensors (`spans`: begin, end, name) it overlaps. v2 expects one claim per chunk."""
    if claims.sha256:
        return "" if sha256_v1(header, payload) == claims.sha256 else "SHA-256 mismatch"
    if header_digest(header) != claims.header:
        return "header checksum mismatch"
    for i, claim in enumerate(claims.chunks):
        lo, hi = i * claims.chunk, min((i + 1) * claims.chunk, payload.nbytes)
        if digest128(payload[lo:hi]) != claim:
            names = [name for begin, end, name in spans if begin < hi and end > lo]
            return f"checksum mismatch in payload bytes [{lo}, {hi}) (tensors {', '.join(names[:8])})"
    return ""
