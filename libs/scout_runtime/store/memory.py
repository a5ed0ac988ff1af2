"""`MemoryStore`: the embedded store (``memory://[name][?rate_mbit=R]``), a dict with expiry times, optionally
behind a `PacedUplink`."""

from __future__ import annotations

import math
import time
from typing import Any

from scout_runtime.errors import BadRequest
from scout_runtime.store.base import META_SUFFIX, BlobStore
from scout_runtime.store.pacing import PacedUplink


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
