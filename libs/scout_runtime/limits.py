"""Input limits, enforced before anything proportional to the input is allocated, and the per-device in-flight cap.

Why a value object rather than constants: every limit is configurable (`Settings.limits()`), yet the message
models must enforce them during validation. Pydantic validators cannot see settings, so `parse` passes a
`Limits` through the validation context; models validated without one (constructed in code, or parsed by a
caller that did not pass limits) are held to `DEFAULT_LIMITS`. Each model field also has a hard ceiling that
no configuration can lift (the type's sanity range), so a misconfigured limit cannot open an unbounded field.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scout_runtime.errors import Overloaded

__all__ = ["DEFAULT_LIMITS", "InflightLimiter", "Limits"]

MiB = 1024 * 1024


class Limits(BaseModel):
    """Configurable input limits (defaults suit a 1 MiB NATS max_payload and 1K-4K-token contexts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_message_bytes: int = Field(default=1 * MiB, ge=1024, le=64 * MiB)
    """Largest encoded bus message accepted by `parse` (checked before JSON parsing)."""
    max_document_bytes: int = Field(default=512 * 1024, ge=1, le=64 * MiB)
    """Largest document (UTF-8 bytes), inline in an ask or staged in the store; larger ones are refused."""
    max_question_chars: int = Field(default=4096, ge=1, le=1 << 20)
    max_new_tokens: int = Field(default=1024, ge=1, le=1 << 16)
    min_deadline_ms: int = Field(default=1, ge=1)
    max_deadline_ms: int = Field(default=600_000, ge=1, le=86_400_000)
    max_context_tokens: int = Field(default=32_768, ge=1, le=1 << 24)
    """Largest context (tokens) a decode request may describe; the position-set decoder's ``max_n``."""
    max_positions_bytes: int = Field(default=64 * 1024, ge=1, le=16 * MiB)
    """Largest encoded position set (decoded bytes, before base64)."""
    max_suffix_tokens: int = Field(default=4096, ge=0, le=1 << 20)
    max_blob_bytes: int = Field(default=256 * MiB, ge=1, le=512 * MiB)
    """Largest staged KV blob (Redis strings are capped at 512 MiB)."""
    max_answer_chars: int = Field(default=64 * 1024, ge=1, le=16 * MiB)

    @model_validator(mode="after")
    def _deadline_range(self) -> Limits:
        if self.min_deadline_ms > self.max_deadline_ms:
            raise ValueError(f"min_deadline_ms {self.min_deadline_ms} exceeds max_deadline_ms {self.max_deadline_ms}")
        return self


DEFAULT_LIMITS = Limits()


class InflightLimiter:
    """At most ``max_per_device`` requests of one device in flight at once; the next one is refused at once.

    Why refuse instead of queueing: a device that floods the service would otherwise grow an unbounded queue
    (memory) and delay every other device's requests; `Overloaded` is retryable, so a well-behaved client backs
    off and tries again. The check is synchronous (no await between test and increment), so it is exact under
    asyncio; the lock also makes it exact across threads.
    """

    def __init__(self, max_per_device: int) -> None:
        if max_per_device < 1:
            raise ValueError(f"max_per_device must be >= 1, got {max_per_device}")
        self.max_per_device = max_per_device
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def inflight(self, device_id: str | None = None) -> int:
        """Requests in flight for one device, or in total."""
        with self._lock:
            if device_id is None:
                return sum(self._counts.values())
            return self._counts.get(device_id, 0)

    @contextmanager
    def acquire(self, device_id: str) -> Iterator[None]:
        """Hold one of the device's slots for the duration of the ``with`` block, or raise `Overloaded`."""
        with self._lock:
            n = self._counts.get(device_id, 0)
            if n >= self.max_per_device:
                raise Overloaded(
                    f"device {device_id!r} already has {n} requests in flight (limit {self.max_per_device})"
                )
            self._counts[device_id] = n + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._counts[device_id] - 1
                if left:
                    self._counts[device_id] = left
                else:
                    del self._counts[device_id]
