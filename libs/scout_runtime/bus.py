"""The message bus: NATS (core request/reply + JetStream work queue) or an in-process bus with the same semantics.

Two kinds of traffic, two mechanisms (DESIGN.md, data flow):

* **Control** (`publish`, `request`, `subscribe`): ask, plan, link state, health. Core NATS: at-most-once,
  request/reply with a timeout, queue groups to spread requests over replicas.
* **Work** (`ensure_work_queue`, `enqueue`, `consume`): decode requests. A JetStream stream with work-queue
  retention and one durable *pull* consumer that every decoder replica fetches from: the durable is the queue
  group (one cursor, shared work, any replica takes any request). Delivery is at-least-once with explicit
  acknowledgement: a replica that dies (or stalls longer than ``ack_wait`` without `WorkItem.in_progress`) leaves
  the request to be redelivered to another one, up to ``max_deliver`` times. Handlers see `WorkItem.delivery_count`
  so a redelivery is visible (results are idempotent by request id; see issue 10). `enqueue` sets the JetStream
  message id (``Nats-Msg-Id``) to the request id, so a publisher retrying after a lost publish-ack does not
  enqueue the request twice within the stream's duplicate window.

Handler contract for `consume`: settle the item (`ack`, `nak`, `term`) yourself, or return normally (the item is
acked) or raise (it is nak'ed after ``spec.nak_delay_s``, so another replica may retry it). A handler that is
cancelled (the consumer aborted, the process died) settles nothing: the item comes back after ``ack_wait``.

Size: NATS counts headers against ``max_payload`` (1 MiB by default) and closes the connection of a client that
sends more (the server's "Maximum Payload Violation"), which would drop every in-flight request on that connection.
Both buses therefore measure headers + body exactly as the NATS wire format does and raise `PayloadTooLarge`
before sending. Header keys must be HTTP tokens and values may not contain CR/LF (header injection).

`InProcessBus` is the embedded default (``scout demo``): clients of one `InProcessBroker` see the same subjects,
queue groups, inboxes, work queues, ack timeouts, redeliveries, max-deliver and duplicate detection as NATS clients
of one server, and closing a client is a crash (its un-acked work comes back after ``ack_wait``). The contract
tests run every behaviour against both.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import re
import ssl
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scout_runtime.errors import (
    BadRequest,
    BusClosed,
    Forbidden,
    NoResponders,
    PayloadTooLarge,
    ScoutError,
    Timeout,
)
from scout_runtime.settings import Settings, redact_url
from scout_runtime.subjects import Subjects

if TYPE_CHECKING:
    import nats.aio.client
    import nats.aio.msg
    import nats.js

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "Bus",
    "EnqueueResult",
    "InProcessBroker",
    "InProcessBus",
    "Msg",
    "NatsBus",
    "QueueStats",
    "Subscription",
    "WorkItem",
    "WorkQueueSpec",
    "check_payload",
    "connect_bus",
    "message_size",
    "normalize_headers",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""NATS's default ``max_payload``; the in-process bus uses the same."""
MSG_ID_HEADER = "Nats-Msg-Id"
_NATS_HDR_LINE = b"NATS/1.0\r\n"
_HEADER_KEY_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_INBOX = "_INBOX."

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


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
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


class _Runner:
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


async def _call_handler(handler: Handler, msg: Msg) -> None:
    try:
        await handler(msg)
    except asyncio.CancelledError:
        raise
    except Exception:
        # A control handler must answer its own errors; reaching here is a bug, but must not kill the subscription.
        log.exception("unhandled error in handler for %s", msg.subject)


async def _call_work_handler(handler: WorkHandler, item: WorkItem, nak_delay_s: float) -> None:
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

    @abstractmethod
    async def enqueue(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
        timeout_s: float = 5.0,
    ) -> EnqueueResult:
        """Persist a work message (waits for the stream's acknowledgement). ``msg_id`` deduplicates retries."""

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


# --- in-process ----------------------------------------------------------------------------------------------
def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` matches one token, a final ``>`` one or more."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def _check_subject(subject: str, *, wildcards: bool) -> None:
    ok = re.fullmatch(r"[^\s.*>]+(\.[^\s.*>]+)*", subject)
    if wildcards:
        ok = re.fullmatch(r"([^\s.*>]+|\*)(\.([^\s.*>]+|\*))*(\.>)?|>", subject)
    if not subject or not ok:
        raise BadRequest(f"invalid subject {subject[:80]!r}")


@dataclass(eq=False)
class _LocalSub(Subscription):
    bus: InProcessBus
    pattern: str
    queue: str | None
    handler: Handler
    runner: _Runner
    inbox: asyncio.Queue[Msg] = field(default_factory=asyncio.Queue)
    pump: asyncio.Task[None] | None = None
    active: bool = True

    def start(self) -> None:
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            msg = await self.inbox.get()
            await self.runner.acquire()
            self.runner.start(_call_handler(self.handler, msg))

    def _detach(self) -> None:
        self.active = False
        self.bus.broker.subs.discard(self)
        self.bus.subs.discard(self)

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        self._detach()
        # Deliver what already arrived (NATS drain semantics), then wait for the handlers.
        deadline = time.monotonic() + drain_timeout_s
        while not self.inbox.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await self._cancel_pump()
        await self.runner.drain(max(0.0, deadline - time.monotonic()))

    async def abort(self) -> None:
        self._detach()
        await self._cancel_pump()
        await self.runner.cancel()

    async def _cancel_pump(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pump


@dataclass(eq=False)
class _Entry:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    deliveries: int = 0
    token: int = 0
    inflight: bool = False
    timer: asyncio.TimerHandle | None = None


class _LocalStream:
    """A work-queue stream with its one durable consumer (in-process)."""

    def __init__(self, spec: WorkQueueSpec) -> None:
        self.spec = spec
        self.entries: dict[int, _Entry] = {}
        self.ready: asyncio.Queue[_Entry] = asyncio.Queue()
        self.dedupe: dict[str, tuple[float, int]] = {}
        self.seq = itertools.count(1)
        self.tokens = itertools.count(1)
        self.redelivered = 0
        self.dead: list[_Entry] = []
        self.consumers: set[_LocalConsumer] = set()

    def expire(self, entry: _Entry, token: int) -> None:
        if self.entries.get(entry.seq) is entry and entry.inflight and entry.token == token:
            entry.inflight = False
            entry.timer = None
            self.retry(entry, None)

    def retry(self, entry: _Entry, delay_s: float | None) -> None:
        """Redeliver, unless max_deliver deliveries have happened (then it is dead, as on NATS)."""
        if entry.deliveries >= self.spec.max_deliver:
            self.entries.pop(entry.seq, None)
            self.dead.append(entry)
            log.warning("%s seq %d reached max_deliver=%d", self.spec.stream, entry.seq, self.spec.max_deliver)
            return
        self.redelivered += 1
        if delay_s:
            asyncio.get_running_loop().call_later(delay_s, self.ready.put_nowait, entry)
        else:
            self.ready.put_nowait(entry)

    def arm(self, entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        entry.timer = asyncio.get_running_loop().call_later(self.spec.ack_wait_s, self.expire, entry, entry.token)

    def settle(self, entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.inflight = False

    def close(self) -> None:
        for entry in self.entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
        self.entries.clear()


class _LocalWorkItem(WorkItem):
    def __init__(self, stream: _LocalStream, entry: _Entry) -> None:
        super().__init__()
        self._stream = stream
        self._entry = entry
        self._token = entry.token
        self.subject = entry.subject
        self.data = entry.data
        self.headers = dict(entry.headers)
        self.delivery_count = entry.deliveries
        self.max_deliver = stream.spec.max_deliver
        self.sequence = entry.seq

    def _current(self) -> bool:
        e = self._entry
        return self._stream.entries.get(e.seq) is e and e.inflight and e.token == self._token

    async def _ack(self) -> None:
        # Like JetStream, an ack is by stream sequence: even a late ack (after a redelivery) removes the message.
        e = self._entry
        if self._stream.entries.get(e.seq) is e:
            self._stream.settle(e)
            del self._stream.entries[e.seq]

    async def _nak(self, delay_s: float | None) -> None:
        if self._current():
            self._stream.settle(self._entry)
            self._stream.retry(self._entry, delay_s)

    async def _term(self) -> None:
        e = self._entry
        if self._stream.entries.get(e.seq) is e:
            self._stream.settle(e)
            del self._stream.entries[e.seq]

    async def _in_progress(self) -> None:
        if self._current():
            self._stream.arm(self._entry)


@dataclass(eq=False)
class _LocalConsumer(Subscription):
    bus: InProcessBus
    stream: _LocalStream
    handler: WorkHandler
    runner: _Runner
    loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.loop_task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        stream = self.stream
        while True:
            await self.runner.acquire()
            try:
                entry = await stream.ready.get()
            except BaseException:
                self.runner.slots.release()
                raise
            if stream.entries.get(entry.seq) is not entry or entry.inflight:
                self.runner.slots.release()  # acked or terminated while waiting for redelivery
                continue
            entry.deliveries += 1
            entry.token = next(stream.tokens)
            entry.inflight = True
            stream.arm(entry)
            item = _LocalWorkItem(stream, entry)
            self.runner.start(_call_work_handler(self.handler, item, stream.spec.nak_delay_s))

    def _detach(self) -> None:
        self.stream.consumers.discard(self)
        self.bus.consumers.discard(self)

    async def _cancel_loop(self) -> None:
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_task

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        self._detach()
        await self._cancel_loop()
        await self.runner.drain(drain_timeout_s)

    async def abort(self) -> None:
        self._detach()
        await self._cancel_loop()
        await self.runner.cancel()


class InProcessBroker:
    """The shared state of in-process buses: what a nats-server is to NATS clients."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.subs: set[_LocalSub] = set()
        self.streams: dict[str, _LocalStream] = {}

    def stream(self, name: str) -> _LocalStream | None:
        return self.streams.get(name)


_BROKERS: dict[str, InProcessBroker] = {}


def _named_broker(name: str) -> InProcessBroker:
    """The process-wide broker of ``inproc://<name>`` (roles in one process share it by URL)."""
    if name not in _BROKERS:
        _BROKERS[name] = InProcessBroker()
    return _BROKERS[name]


class InProcessBus(Bus):
    """A client of an `InProcessBroker`; several clients of one broker behave like NATS connections to one server."""

    def __init__(self, broker: InProcessBroker | None = None, *, name: str = "inproc") -> None:
        self.broker = broker or InProcessBroker()
        self.name = name
        self.subs: set[_LocalSub] = set()
        self.consumers: set[_LocalConsumer] = set()
        self._closed = False

    @property
    def max_payload(self) -> int:
        return self.broker.max_payload

    @property
    def is_connected(self) -> bool:
        return not self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosed("the in-process bus client is closed")

    def _route(self, subject: str, data: bytes, headers: dict[str, str] | None, reply: str | None) -> int:
        matches = [s for s in self.broker.subs if s.active and subject_matches(s.pattern, subject)]
        groups: dict[str, list[_LocalSub]] = {}
        targets: list[_LocalSub] = []
        for sub in matches:
            if sub.queue:
                groups.setdefault(sub.queue, []).append(sub)
            else:
                targets.append(sub)
        targets += [random.choice(members) for members in groups.values()]
        for sub in targets:
            sub.inbox.put_nowait(Msg(subject, data, dict(headers or {}), reply, sub.bus))
        return len(targets)

    async def publish(self, subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        self._check_open()
        _check_subject(subject, wildcards=False)
        data = _as_bytes(data)
        hdrs = normalize_headers(headers)
        check_payload(data, hdrs, self.max_payload)
        self._route(subject, data, hdrs, None)

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0
    ) -> Msg:
        self._check_open()
        _check_subject(subject, wildcards=False)
        data = _as_bytes(data)
        hdrs = normalize_headers(headers)
        check_payload(data, hdrs, self.max_payload)
        inbox = f"{_INBOX}{uuid.uuid4().hex}"
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

        async def on_reply(msg: Msg) -> None:
            if not future.done():
                future.set_result(Msg(msg.subject, msg.data, msg.headers, msg.reply, self))

        sub = _LocalSub(self, inbox, None, on_reply, _Runner(inbox, 1))
        self.broker.subs.add(sub)
        sub.start()
        try:
            if self._route(subject, data, hdrs, inbox) == 0:
                raise NoResponders(f"no responders on {subject!r}")
            try:
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                raise Timeout(f"no reply on {subject!r} within {timeout_s}s") from None
        finally:
            await sub.abort()

    async def subscribe(
        self, subject: str, handler: Handler, *, queue: str | None = None, concurrency: int = 1
    ) -> Subscription:
        self._check_open()
        _check_subject(subject, wildcards=True)
        sub = _LocalSub(self, subject, queue or None, handler, _Runner(subject, concurrency))
        self.broker.subs.add(sub)
        self.subs.add(sub)
        sub.start()
        return sub

    async def ensure_work_queue(self, spec: WorkQueueSpec) -> None:
        self._check_open()
        existing = self.broker.streams.get(spec.stream)
        if existing is None:
            self.broker.streams[spec.stream] = _LocalStream(spec)
        else:
            existing.spec = spec

    async def delete_work_queue(self, spec: WorkQueueSpec) -> None:
        self._check_open()
        stream = self.broker.streams.pop(spec.stream, None)
        if stream is not None:
            for consumer in list(stream.consumers):
                await consumer.abort()
            stream.close()

    async def enqueue(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
        timeout_s: float = 5.0,
    ) -> EnqueueResult:
        self._check_open()
        _check_subject(subject, wildcards=False)
        data = _as_bytes(data)
        hdrs = normalize_headers({**(headers or {}), **({MSG_ID_HEADER: msg_id} if msg_id else {})})
        check_payload(data, hdrs, self.max_payload)
        stream = next(
            (s for s in self.broker.streams.values() if any(subject_matches(p, subject) for p in s.spec.subjects)),
            None,
        )
        if stream is None:
            raise NoResponders(f"no stream captures {subject!r}")
        if 0 < stream.spec.max_msg_bytes < message_size(data, hdrs):
            raise PayloadTooLarge(f"message exceeds the stream's max_msg_bytes of {stream.spec.max_msg_bytes}")
        now = time.monotonic()
        if msg_id:
            stream.dedupe = {k: v for k, v in stream.dedupe.items() if v[0] > now}
            if msg_id in stream.dedupe:
                return EnqueueResult(stream.spec.stream, stream.dedupe[msg_id][1], True)
        seq = next(stream.seq)
        if msg_id:
            stream.dedupe[msg_id] = (now + stream.spec.duplicate_window_s, seq)
        entry = _Entry(seq, subject, data, dict(hdrs or {}))
        stream.entries[seq] = entry
        stream.ready.put_nowait(entry)
        return EnqueueResult(stream.spec.stream, seq, False)

    async def consume(self, spec: WorkQueueSpec, handler: WorkHandler, *, concurrency: int = 1) -> Subscription:
        self._check_open()
        stream = self.broker.streams.get(spec.stream)
        if stream is None:
            raise NoResponders(f"no work queue {spec.stream!r}; call ensure_work_queue first")
        consumer = _LocalConsumer(self, stream, handler, _Runner(spec.stream, concurrency))
        stream.consumers.add(consumer)
        self.consumers.add(consumer)
        consumer.start()
        return consumer

    async def queue_stats(self, spec: WorkQueueSpec) -> QueueStats:
        stream = self.broker.streams.get(spec.stream)
        if stream is None:
            raise NoResponders(f"no work queue {spec.stream!r}")
        inflight = sum(1 for e in stream.entries.values() if e.inflight)
        return QueueStats(len(stream.entries) - inflight, inflight, stream.redelivered)

    def dead_letters(self, spec: WorkQueueSpec) -> list[tuple[int, bytes]]:
        """(sequence, data) of messages that reached max_deliver (NATS reports these as advisories)."""
        stream = self.broker.streams.get(spec.stream)
        return [] if stream is None else [(e.seq, e.data) for e in stream.dead]

    async def close(self, drain: bool = False) -> None:
        if self._closed:
            return
        subs: list[Subscription] = [*self.subs, *self.consumers]
        for sub in subs:
            if drain:
                await sub.stop()
            else:
                await sub.abort()
        self._closed = True


# --- NATS ----------------------------------------------------------------------------------------------------
def _nats_tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.nats_tls_ca is None and settings.nats_tls_cert is None:
        return None
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
    )
    if settings.nats_tls_cert is not None and settings.nats_tls_key is not None:
        ctx.load_cert_chain(str(settings.nats_tls_cert), str(settings.nats_tls_key))
    return ctx


class _NatsWorkItem(WorkItem):
    def __init__(self, msg: nats.aio.msg.Msg, spec: WorkQueueSpec, ack_timeout_s: float) -> None:
        super().__init__()
        self._msg = msg
        meta = msg.metadata
        self.subject = msg.subject
        self.data = msg.data
        self.headers = dict(msg.headers or {})
        self.delivery_count = int(meta.num_delivered or 1)
        self.max_deliver = spec.max_deliver
        self.sequence = int(meta.sequence.stream) if meta.sequence else 0
        self._ack_timeout_s = ack_timeout_s

    async def _settle(self, op: Callable[[], Awaitable[Any]], what: str) -> None:
        import nats.errors

        try:
            await op()
        except nats.errors.TimeoutError:
            raise Timeout(f"{what} of seq {self.sequence} was not confirmed") from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as e:
            raise BusClosed(f"{what} of seq {self.sequence} failed: {type(e).__name__}") from None

    async def _ack(self) -> None:
        await self._settle(lambda: self._msg.ack_sync(timeout=self._ack_timeout_s), "ack")

    async def _nak(self, delay_s: float | None) -> None:
        await self._settle(lambda: self._msg.nak(delay=delay_s), "nak")

    async def _term(self) -> None:
        await self._settle(self._msg.term, "term")

    async def _in_progress(self) -> None:
        await self._settle(self._msg.in_progress, "in_progress")


class _NatsSub(Subscription):
    def __init__(self, sub: Any, runner: _Runner) -> None:
        self._sub = sub
        self._runner = runner

    async def _unsubscribe(self) -> None:
        import nats.errors

        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        await self._unsubscribe()
        await self._runner.drain(drain_timeout_s)

    async def abort(self) -> None:
        await self._unsubscribe()
        await self._runner.cancel()


class _NatsConsumer(Subscription):
    """Fetch loop over a pull subscription bound to the shared durable consumer."""

    def __init__(self, bus: NatsBus, psub: Any, spec: WorkQueueSpec, handler: WorkHandler, runner: _Runner) -> None:
        self._bus = bus
        self._psub = psub
        self._spec = spec
        self._handler = handler
        self._runner = runner
        self._stopping = False
        self._fetching = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        import nats.errors

        while not self._stopping:
            await self._runner.acquire()
            self._fetching = True
            failure: Exception | None = None
            msgs: list[Any] = []
            try:
                msgs = await self._psub.fetch(1, timeout=self._bus.poll_s)
            except nats.errors.TimeoutError:
                pass
            except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                self._runner.slots.release()
                return
            except asyncio.CancelledError:
                self._runner.slots.release()
                raise
            except Exception as e:  # consumer deleted, reconnecting, server hiccup: back off and retry
                failure = e
            finally:
                self._fetching = False
            if not msgs:
                self._runner.slots.release()
                if failure is not None:
                    log.warning("fetch from %s failed: %s: %s", self._spec.stream, type(failure).__name__, failure)
                    await asyncio.sleep(self._bus.poll_s)
                continue
            msg = msgs[0]
            if self._stopping:  # fetched while stopping: hand it straight back to another replica
                self._runner.slots.release()
                with contextlib.suppress(Exception):
                    await msg.nak()
                return
            item = _NatsWorkItem(msg, self._spec, self._bus.ack_timeout_s)
            self._runner.start(_call_work_handler(self._handler, item, self._spec.nak_delay_s))

    async def _end(self, cancel_fetch: bool) -> None:
        import nats.errors

        self._stopping = True
        self._bus._consumers.discard(self)
        if self._task is not None:
            # Waiting for a slot or backing off: cancel. Fetching: let the fetch finish (at most poll_s), so a
            # message the server already handed over is nak'ed back rather than stranded until ack_wait.
            if cancel_fetch or not self._fetching:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(nats.errors.Error):
            await self._psub.unsubscribe()

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        await self._end(cancel_fetch=False)
        await self._runner.drain(drain_timeout_s)

    async def abort(self) -> None:
        await self._end(cancel_fetch=True)
        await self._runner.cancel()


class NatsBus(Bus):
    """`Bus` over a nats-py connection (core NATS for control, JetStream for the work queue)."""

    def __init__(
        self, nc: nats.aio.client.Client, *, name: str = "nats", poll_s: float = 1.0, ack_timeout_s: float = 5.0
    ) -> None:
        self.nc = nc
        self.js: nats.js.JetStreamContext = nc.jetstream()
        self.jsm: nats.js.JetStreamManager = nc.jsm()
        self.name = name
        self.poll_s = poll_s
        """How long one fetch waits for work (also bounds how long a graceful `stop` takes)."""
        self.ack_timeout_s = ack_timeout_s
        self._subs: set[_NatsSub] = set()
        self._consumers: set[_NatsConsumer] = set()

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        name: str = "scout",
        url: str | None = None,
        poll_s: float = 1.0,
    ) -> NatsBus:
        """Connect with the settings' servers, credentials, TLS and reconnect policy.

        The first connection fails fast (each server tried twice): a service that cannot reach NATS at start
        should exit and let its supervisor restart it. Once connected, the client reconnects ``nats_max_reconnect``
        times (forever by default), buffering publishes meanwhile. Wrong credentials raise `Forbidden`.
        """
        import nats
        import nats.errors

        settings = settings or Settings()
        servers = [s.strip() for s in (url or settings.nats_url.get_secret_value()).split(",")]
        shown = redact_url(",".join(servers))
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e))
            log.warning("nats (%s): %s: %s", name, type(e).__name__, e)

        async def on_disconnected() -> None:
            log.warning("nats (%s): disconnected from %s", name, shown)

        async def on_reconnected() -> None:
            log.info("nats (%s): reconnected", name)

        options: dict[str, Any] = {
            "servers": servers,
            "name": name,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            "connect_timeout": settings.nats_connect_timeout_s,
            "reconnect_time_wait": settings.nats_reconnect_wait_s,
            "max_reconnect_attempts": 1,
            "allow_reconnect": True,
        }
        if settings.nats_user:
            options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = settings.nats_password.get_secret_value()
        if settings.nats_token is not None:
            options["token"] = settings.nats_token.get_secret_value()
        tls = _nats_tls(settings)
        if tls is not None:
            options["tls"] = tls
            if settings.nats_tls_hostname:
                options["tls_hostname"] = settings.nats_tls_hostname
        try:
            nc = await nats.connect(**options)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            if any("authorization" in m.lower() or "authentication" in m.lower() for m in errors):
                raise Forbidden(f"NATS at {shown} refused the credentials") from None
            raise BusClosed(f"cannot connect to NATS at {shown}: {type(e).__name__}") from None
        nc.options["max_reconnect_attempts"] = settings.nats_max_reconnect
        return cls(nc, name=name, poll_s=poll_s)

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)

    @property
    def is_connected(self) -> bool:
        return bool(self.nc.is_connected)

    def _errors(self) -> Any:
        import nats.errors

        return nats.errors

    async def publish(self, subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        errors = self._errors()
        data = _as_bytes(data)
        hdrs = normalize_headers(headers)
        check_payload(data, hdrs, self.max_payload)
        try:
            await self.nc.publish(subject, data, headers=hdrs)
        except errors.BadSubjectError:
            raise BadRequest(f"invalid subject {subject[:80]!r}") from None
        except (errors.ConnectionClosedError, errors.OutboundBufferLimitError) as e:
            raise BusClosed(f"publish to {subject!r} failed: {type(e).__name__}") from None

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0
    ) -> Msg:
        errors = self._errors()
        data = _as_bytes(data)
        hdrs = normalize_headers(headers)
        check_payload(data, hdrs, self.max_payload)
        try:
            reply = await self.nc.request(subject, data, timeout=timeout_s, headers=hdrs)
        except errors.NoRespondersError:
            raise NoResponders(f"no responders on {subject!r}") from None
        except errors.TimeoutError:
            raise Timeout(f"no reply on {subject!r} within {timeout_s}s") from None
        except errors.BadSubjectError:
            raise BadRequest(f"invalid subject {subject[:80]!r}") from None
        except (errors.ConnectionClosedError, errors.OutboundBufferLimitError) as e:
            raise BusClosed(f"request to {subject!r} failed: {type(e).__name__}") from None
        return Msg(reply.subject, reply.data, dict(reply.headers or {}), reply.reply or None, self)

    async def subscribe(
        self, subject: str, handler: Handler, *, queue: str | None = None, concurrency: int = 1
    ) -> Subscription:
        errors = self._errors()
        runner = _Runner(subject, concurrency)

        async def cb(m: nats.aio.msg.Msg) -> None:
            msg = Msg(m.subject, m.data, dict(m.headers or {}), m.reply or None, self)
            await runner.acquire()
            runner.start(_call_handler(handler, msg))

        try:
            sub = await self.nc.subscribe(subject, queue=queue or "", cb=cb)
        except errors.BadSubjectError:
            raise BadRequest(f"invalid subject {subject[:80]!r}") from None
        except errors.ConnectionClosedError:
            raise BusClosed("the NATS connection is closed") from None
        # Round-trip to the server so the interest is registered when subscribe returns: a request sent right
        # after (from any connection) must find this responder. While reconnecting, the client re-subscribes itself.
        with contextlib.suppress(errors.Error, TimeoutError):
            await self.nc.flush(timeout=5)
        wrapped = _NatsSub(sub, runner)
        self._subs.add(wrapped)
        return wrapped

    async def ensure_work_queue(self, spec: WorkQueueSpec) -> None:
        from nats.js import api
        from nats.js.errors import BadRequestError

        stream = api.StreamConfig(
            name=spec.stream,
            subjects=list(spec.subjects),
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            max_age=spec.max_age_s,
            max_msg_size=spec.max_msg_bytes,
            duplicate_window=spec.duplicate_window_s,
            discard=api.DiscardPolicy.OLD,
            num_replicas=1,
        )
        consumer = api.ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=spec.ack_wait_s,
            max_deliver=spec.max_deliver,
            max_ack_pending=spec.max_ack_pending,
        )
        jsm = self.jsm
        try:
            try:
                await jsm.add_stream(stream)
            except BadRequestError as e:
                if e.err_code != 10058:  # "stream name already in use with a different configuration"
                    raise
                await jsm.update_stream(stream)
            await jsm.add_consumer(spec.stream, consumer)  # creates, or updates the editable fields
        except self._errors().TimeoutError:
            raise Timeout("JetStream did not answer (is JetStream enabled on the server?)") from None

    async def delete_work_queue(self, spec: WorkQueueSpec) -> None:
        from nats.js.errors import NotFoundError

        with contextlib.suppress(NotFoundError):
            await self.jsm.delete_stream(spec.stream)

    async def enqueue(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
        timeout_s: float = 5.0,
    ) -> EnqueueResult:
        from nats.js.errors import APIError, NoStreamResponseError

        errors = self._errors()
        data = _as_bytes(data)
        hdrs = normalize_headers({**(headers or {}), **({MSG_ID_HEADER: msg_id} if msg_id else {})})
        check_payload(data, hdrs, self.max_payload)
        try:
            ack = await self.js.publish(subject, data, timeout=timeout_s, headers=hdrs)
        except NoStreamResponseError:
            raise NoResponders(f"no stream captures {subject!r}") from None
        except errors.TimeoutError:
            raise Timeout(f"JetStream did not acknowledge {subject!r} within {timeout_s}s") from None
        except APIError as e:
            if e.err_code == 10054:  # "message size exceeds maximum allowed"
                raise PayloadTooLarge("message exceeds the stream's max_msg_bytes") from None
            raise
        except (errors.ConnectionClosedError, errors.OutboundBufferLimitError) as e:
            raise BusClosed(f"enqueue to {subject!r} failed: {type(e).__name__}") from None
        return EnqueueResult(ack.stream, int(ack.seq), bool(ack.duplicate))

    async def consume(self, spec: WorkQueueSpec, handler: WorkHandler, *, concurrency: int = 1) -> Subscription:
        from nats.js.errors import NotFoundError

        try:
            psub = await self.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
            await psub.consumer_info()
        except NotFoundError:
            raise NoResponders(f"no work queue {spec.stream!r}; call ensure_work_queue first") from None
        consumer = _NatsConsumer(self, psub, spec, handler, _Runner(spec.stream, concurrency))
        self._consumers.add(consumer)
        consumer.start()
        return consumer

    async def queue_stats(self, spec: WorkQueueSpec) -> QueueStats:
        from nats.js.errors import NotFoundError

        try:
            info = await self.jsm.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            raise NoResponders(f"no work queue {spec.stream!r}") from None
        return QueueStats(int(info.num_pending or 0), int(info.num_ack_pending or 0), int(info.num_redelivered or 0))

    async def close(self, drain: bool = False) -> None:
        if self.nc.is_closed:
            return
        for sub in [*self._subs, *self._consumers]:
            if drain:
                await sub.stop()
            else:
                await sub.abort()
        self._subs.clear()
        with contextlib.suppress(Exception):
            await self.nc.close()


# --- factory -------------------------------------------------------------------------------------------------
async def connect_bus(settings: Settings | None = None, *, name: str = "scout") -> Bus:
    """The bus the settings name: ``inproc://<broker>`` -> `InProcessBus`, anything else -> `NatsBus`."""
    settings = settings or Settings()
    url = settings.nats_url.get_secret_value()
    if url.startswith("inproc://"):
        return InProcessBus(_named_broker(url[len("inproc://") :] or "default"), name=name)
    return await NatsBus.connect(settings, name=name)
