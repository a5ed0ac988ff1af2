"""The bus interface and what both buses share: message sizes and headers, the value types (`Msg`,
`WorkItem`, `WorkQueueSpec`, …), and the handler runner. The contract is in the package docstring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scout_runtime.errors import BadRequest, PayloadTooLarge, ScoutError
from scout_runtime.settings import Settings
from scout_runtime.subjects import Subjects

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""NATS's default ``max_payload``; the in-process bus uses the same."""
MSG_ID_HEADER = "Nats-Msg-Id"
_NATS_HDR_LINE = b"NATS/1.0\r\n"
_HEADER_KEY_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
Handler = Callable[["Msg"], Awaitable[None]]
WorkHandler = Callable[["WorkItem"], Awaitable[None]]


# --- sizes and headers ---------------------------------------------------------------------------------------
def normalize_headers(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """Validated headers as sent (keys and values stripped), or None when there are none.

    Raises `BadRequest` for a key that is not an HTTP token or a value with CR, LF or NUL: NATS would either
    reject the key or silently rewrite the value, and a CR/LF is a header-injection attempt.
    """
    if not headers:
        return None
    out: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise BadRequest("header keys and values must be strings")
        k = key.strip()
        if not _HEADER_KEY_RE.fullmatch(k):
            raise BadRequest(f"invalid header name {key[:40]!r}")
        if any(c in value for c in "\r\n\0"):
            raise BadRequest(f"header {k!r} contains a line break or NUL")
        out[k] = value.strip()
    return out


def _header_block_size(headers: Mapping[str, str] | None) -> int:
    if not headers:
        return 0
    n = len(_NATS_HDR_LINE)
    for key, value in headers.items():
        n += len(key.encode("utf-8")) + 2 + len(value.encode("utf-8")) + 2
    return n + 2


def message_size(data: bytes, headers: Mapping[str, str] | None = None) -> int:
    """Bytes NATS counts against ``max_payload``: the header block (``NATS/1.0`` line, one line per header,
    blank line) plus the body."""
    return _header_block_size(headers) + len(data)


def check_payload(data: bytes, headers: Mapping[str, str] | None, max_payload: int) -> int:
    """The message size, or `PayloadTooLarge` if headers + body exceed ``max_payload``."""
    body = len(data)
    hdr = _header_block_size(headers)
    if body + hdr > max_payload:
        raise PayloadTooLarge(
            f"message of {body + hdr} bytes (headers {hdr} + body {body}) exceeds the bus max_payload of "
            f"{max_payload}; stage large data in the store and send a reference"
        )
    return body + hdr


def as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise BadRequest(f"message data must be bytes, got {type(data).__name__}")


# --- value types ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Msg:
    """A control message as a subscriber (or requester) sees it."""

    subject: str
    data: bytes
    headers: dict[str, str]
    reply: str | None
    bus: Bus = field(repr=False, compare=False)

    async def respond(self, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        """Publish the reply to this request (size-checked like any publish)."""
        if not self.reply:
            raise BadRequest(f"message on {self.subject!r} has no reply subject")
        await self.bus.publish(self.reply, data, headers)


@dataclass(frozen=True)
class EnqueueResult:
    """JetStream's publish acknowledgement: the stream sequence, and whether the message id was a duplicate."""

    stream: str
    sequence: int
    duplicate: bool


@dataclass(frozen=True)
class QueueStats:
    """A work queue's backlog: not yet delivered, delivered but not acked, and redelivered-but-pending counts."""

    pending: int
    ack_pending: int
    redelivered: int = 0

    @property
    def lag(self) -> int:
        """Requests not yet finished (the KEDA scaling signal and the ``decode_queue_lag`` gauge)."""
        return self.pending + self.ack_pending


class WorkQueueSpec(BaseModel):
    """A JetStream work queue: the stream, its subjects, and the one durable consumer all replicas share."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stream: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    subjects: tuple[str, ...] = Field(min_length=1)
    durable: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=3, ge=1)
    max_ack_pending: int = Field(default=1024, ge=1)
    max_age_s: float = Field(default=3600.0, gt=0)
    max_msg_bytes: int = Field(default=-1, ge=-1)
    duplicate_window_s: float = Field(default=120.0, gt=0)
    nak_delay_s: float = Field(default=0.5, ge=0)

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for s in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.(\*|>))?", s):
                raise ValueError(f"invalid work-queue subject {s!r}")
        return value

    @classmethod
    def for_decode(cls, settings: Settings | None = None, subjects: Subjects | None = None) -> WorkQueueSpec:
        """The decode work queue as the settings configure it."""
        settings = settings or Settings()
        subjects = subjects or settings.subjects()
        return cls(
            stream=subjects.decode_stream,
            subjects=(subjects.decode,),
            durable=subjects.decode_durable,
            ack_wait_s=settings.ack_wait_s,
            max_deliver=settings.max_deliver,
            max_age_s=settings.decode_max_age_s,
            max_msg_bytes=settings.max_message_bytes,
            nak_delay_s=settings.nak_delay_s,
        )


class WorkItem(ABC):
    """One delivery of a work-queue message. Settle it exactly once: `ack`, `nak` or `term` (later calls are no-ops)."""

    subject: str
    data: bytes
    headers: dict[str, str]
    delivery_count: int
    """1 on the first delivery, n on the n-th (a redelivery after a nak, an ack timeout or a dead consumer)."""
    max_deliver: int
    sequence: int
    """The message's stream sequence (the same for every delivery of one message)."""

    def __init__(self) -> None:
        self.settled = False

    @property
    def redelivered(self) -> bool:
        return self.delivery_count > 1

    @property
    def is_last_delivery(self) -> bool:
        """No further redelivery will happen after this one: a handler that fails now should reply with an error."""
        return self.delivery_count >= self.max_deliver

    async def ack(self) -> None:
        """Done: the message is removed from the queue (waits for the server's confirmation on NATS)."""
        if not self.settled:
            self.settled = True
            await self._ack()

    async def nak(self, delay_s: float | None = None) -> None:
        """Not done: redeliver (after ``delay_s``), unless this was the last allowed delivery."""
        if not self.settled:
            self.settled = True
            await self._nak(delay_s)

    async def term(self) -> None:
        """Give up on this message: never redeliver it (e.g. it can never succeed)."""
        if not self.settled:
            self.settled = True
            await self._term()

    async def in_progress(self) -> None:
        """Still working: restart the ack-wait timer (call more often than ``ack_wait`` during long decodes)."""
        if not self.settled:
            await self._in_progress()

    @contextlib.asynccontextmanager
    async def keep_alive(self, interval_s: float) -> AsyncIterator[None]:
        """Call `in_progress` every ``interval_s`` while the block runs (pick a third of ``ack_wait``)."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.in_progress()
                except ScoutError as e:
                    log.warning("in_progress failed for %s seq %d: %s", self.subject, self.sequence, e)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @abstractmethod
    async def _ack(self) -> None: ...

    @abstractmethod
    async def _nak(self, delay_s: float | None) -> None: ...

    @abstractmethod
    async def _term(self) -> None: ...

    @abstractmethod
    async def _in_progress(self) -> None: ...


class Subscription(ABC):
    """A running subscription or work-queue consumer."""

    @abstractmethod
    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Graceful: take no new messages, let in-flight handlers finish (up to the timeout, then cancel them)."""

    @abstractmethod
    async def abort(self) -> None:
        """Crash: stop at once and cancel in-flight handlers without settling anything."""


class Runner:
    """Runs handler calls as tasks, at most ``concurrency`` at once, and tracks them for draining or aborting."""

    def __init__(self, name: str, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.name = name
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()

    async def acquire(self) -> None:
        await self.slots.acquire()

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` holding one slot (acquired by the caller), releasing it at the end."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.slots.release()
            if not t.cancelled() and t.exception() is not None:
                log.error("handler on %s failed", self.name, exc_info=t.exception())

        task.add_done_callback(done)

    async def drain(self, timeout_s: float) -> None:
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
            if pending:
                log.warning(
                    "%d handlers on %s still running after %.1fs: cancelled", len(pending), self.name, timeout_s
                )
                await self.cancel()

    async def cancel(self) -> None:
        tasks = set(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def call_handler(handler: Handler, msg: Msg) -> None:
    try:
        await handler(msg)
    except asyncio.CancelledError:
        raise
    except Exception:
        # A control handler must answer its own errors; reaching here is a bug, but must not kill the subscription.
        log.exception("unhandled error in handler for %s", msg.subject)


async def call_work_handler(handler: WorkHandler, item: WorkItem, nak_delay_s: float) -> None:
    try:
        await handler(item)
    except asyncio.CancelledError:
        raise  # aborted: settle nothing, the item comes back after ack_wait
    except Exception:
        log.exception("work handler failed on %s (delivery %d): nak", item.subject, item.delivery_count)
        try:
            await item.nak(nak_delay_s)
        except ScoutError as e:
            log.warning("nak failed: %s", e)
        return
    if not item.settled:
        try:
            await item.ack()
        except ScoutError as e:
            log.warning("ack failed on %s seq %d: %s", item.subject, item.sequence, e)


# --- the interface -------------------------------------------------------------------------------------------
class Bus(ABC):
    """What services use to talk: control messages and the decode work queue (see the module docstring)."""

    name: str = "bus"

    def _check_send(self, subject: str) -> None:  # noqa: B027 (an optional hook, empty on purpose)
        """What a bus checks before it sends to ``subject`` beyond size and headers (the in-process bus: that it
        is open and that the subject is valid); nothing by default, as NATS itself rejects a bad subject."""

    def _outgoing(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None
    ) -> tuple[bytes, dict[str, str] | None]:
        """The body and headers as they will be sent, checked the same way by every bus and every kind of send
        (publish, request, enqueue), so an oversized or malformed message fails before it reaches the wire."""
        self._check_send(subject)
        body = as_bytes(data)
        hdrs = normalize_headers(headers)
        check_payload(body, hdrs, self.max_payload)
        return body, hdrs

    @property
    @abstractmethod
    def max_payload(self) -> int:
        """Largest message (headers + body) the bus accepts."""

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    async def publish(self, subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        """Fire and forget (at most once); no subscriber means nobody gets it."""

    @abstractmethod
    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0
    ) -> Msg:
        """Send and wait for one reply; `NoResponders` if nobody serves the subject, `Timeout` if no reply in time."""

    @abstractmethod
    async def subscribe(
        self, subject: str, handler: Handler, *, queue: str | None = None, concurrency: int = 1
    ) -> Subscription:
        """Call ``handler`` for every message on ``subject`` (NATS wildcards allowed); with ``queue``, each message
        goes to one member of the queue group. At most ``concurrency`` handler calls run at once."""

    @abstractmethod
    async def ensure_work_queue(self, spec: WorkQueueSpec) -> None:
        """Create the stream and the durable consumer, or update them to ``spec`` (idempotent)."""

    @abstractmethod
    async def delete_work_queue(self, spec: WorkQueueSpec) -> None:
        """Delete the stream (and its consumer); missing is fine."""

    async def enqueue(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
        timeout_s: float = 5.0,
    ) -> EnqueueResult:
        """Persist a work message (waits for the stream's acknowledgement). ``msg_id`` deduplicates retries: it
        travels as the ``Nats-Msg-Id`` header, so it counts against ``max_payload`` like any other header."""
        data, hdrs = self._outgoing(subject, data, {**(headers or {}), **({MSG_ID_HEADER: msg_id} if msg_id else {})})
        return await self._enqueue(subject, data, hdrs, msg_id, timeout_s)

    @abstractmethod
    async def _enqueue(
        self, subject: str, data: bytes, hdrs: dict[str, str] | None, msg_id: str | None, timeout_s: float
    ) -> EnqueueResult:
        """`enqueue` once the message passed `_outgoing`; ``hdrs`` already carry ``msg_id``."""

    @abstractmethod
    async def consume(self, spec: WorkQueueSpec, handler: WorkHandler, *, concurrency: int = 1) -> Subscription:
        """Fetch from the shared durable consumer, at most ``concurrency`` items in flight (see the contract)."""

    @abstractmethod
    async def queue_stats(self, spec: WorkQueueSpec) -> QueueStats: ...

    @abstractmethod
    async def close(self, drain: bool = False) -> None:
        """Close the connection; with ``drain``, stop subscriptions gracefully first."""

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
