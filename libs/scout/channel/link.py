"""An in-process uplink that paces a transfer at a configured rate, for library code without an event loop (its
transfer-time model is also the one the shaper's relay follows). The embedded services of `scout demo` pace their
uploads in the memory store instead (`memory://name?rate_mbit=R`, `scout_runtime.store`); both stand in for the
tc-shaped link the shaper sidecar provides in a real deployment."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class PacedLink:
    """Delivers bytes at `rate_bps` bits per second (sleeping, in chunks so callers can show progress).

    `one_way_delay_s` adds a fixed propagation delay before the first byte, as a relay would.
    """

    rate_bps: float
    one_way_delay_s: float = 0.0
    chunk_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        if not self.rate_bps > 0:
            raise ValueError(f"link rate must be positive, got {self.rate_bps} bit/s")
        if self.one_way_delay_s < 0:
            raise ValueError("one-way delay must not be negative")

    def transfer_time(self, nbytes: int) -> float:
        """Seconds the transfer of `nbytes` takes on this link (serialisation at the rate plus the delay)."""
        return self.one_way_delay_s + nbytes * 8 / self.rate_bps

    def send(self, data: bytes, progress: Callable[[int], None] | None = None) -> tuple[bytes, float]:
        """Return (what arrived, seconds it took); the bytes are delivered unchanged."""
        start = time.perf_counter()
        if self.one_way_delay_s:
            time.sleep(self.one_way_delay_s)
        sent = 0
        while sent < len(data):
            step = min(self.chunk_bytes, len(data) - sent)
            sent += step
            deadline = start + self.one_way_delay_s + sent * 8 / self.rate_bps
            pause = deadline - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            if progress is not None:
                progress(step)
        return bytes(data), time.perf_counter() - start
