"""`PacedUplink`: a simulated uplink that paces asynchronous writes at a rate (the ``?rate_mbit=R`` option of
``memory://`` stores, see the package docstring)."""

from __future__ import annotations

import asyncio
import math
import threading
import time


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
