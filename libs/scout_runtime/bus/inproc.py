"""`InProcessBus`: the embedded bus (``scout demo``), with the same semantics as NATS for clients of one
`InProcessBroker` (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from scout_runtime.bus import base
from scout_runtime.errors import BadRequest, BusClosed, NoResponders, PayloadTooLarge, Timeout

log = logging.getLogger(__name__)

_INBOX = "_INBOX."


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
class _LocalSub(base.Subscription):
    bus: InProcessBus
    pattern: str
    queue: str | None
    handler: base.Handler
    runner: base.Runner
    inbox: asyncio.Queue[base.Msg] = field(default_factory=asyncio.Queue)
    pump: asyncio.Task[None] | None = None
    active: bool = True

    def start(self) -> None:
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            msg = await self.inbox.get()
            await self.runner.acquire()
            self.runner.start(base.call_handler(self.handler, msg))

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

    def __init__(self, spec: base.WorkQueueSpec) -> None:
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


class _LocalWorkItem(base.WorkItem):
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
class _LocalConsumer(base.Subscription):
    bus: InProcessBus
    stream: _LocalStream
    handler: base.WorkHandler
    runner: base.Runner
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
            self.runner.start(base.call_work_handler(self.handler, item, stream.spec.nak_delay_s))

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

    def __init__(self, max_payload: int = base.DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.subs: set[_LocalSub] = set()
        self.streams: dict[str, _LocalStream] = {}

    def stream(self, name: str) -> _LocalStream | None:
        return self.streams.get(name)


_BROKERS: dict[str, InProcessBroker] = {}


def named_broker(name: str) -> InProcessBroker:
    """The process-wide broker of ``inproc://<name>`` (roles in one process share it by URL)."""
    if name not in _BROKERS:
        _BROKERS[name] = InProcessBroker()
    return _BROKERS[name]


class InProcessBus(base.Bus):
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

    def _check_send(self, subject: str) -> None:
        self._check_open()
        _check_subject(subject, wildcards=False)

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
            sub.inbox.put_nowait(base.Msg(subject, data, dict(headers or {}), reply, sub.bus))
        return len(targets)

    async def publish(self, subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        data, hdrs = self._outgoing(subject, data, headers)
        self._route(subject, data, hdrs, None)

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0
    ) -> base.Msg:
        data, hdrs = self._outgoing(subject, data, headers)
        inbox = f"{_INBOX}{uuid.uuid4().hex}"
        future: asyncio.Future[base.Msg] = asyncio.get_running_loop().create_future()

        async def on_reply(msg: base.Msg) -> None:
            if not future.done():
                future.set_result(base.Msg(msg.subject, msg.data, msg.headers, msg.reply, self))

        sub = _LocalSub(self, inbox, None, on_reply, base.Runner(inbox, 1))
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
        self, subject: str, handler: base.Handler, *, queue: str | None = None, concurrency: int = 1
    ) -> base.Subscription:
        self._check_open()
        _check_subject(subject, wildcards=True)
        sub = _LocalSub(self, subject, queue or None, handler, base.Runner(subject, concurrency))
        self.broker.subs.add(sub)
        self.subs.add(sub)
        sub.start()
        return sub

    async def ensure_work_queue(self, spec: base.WorkQueueSpec) -> None:
        self._check_open()
        existing = self.broker.streams.get(spec.stream)
        if existing is None:
            self.broker.streams[spec.stream] = _LocalStream(spec)
        else:
            existing.spec = spec

    async def delete_work_queue(self, spec: base.WorkQueueSpec) -> None:
        self._check_open()
        stream = self.broker.streams.pop(spec.stream, None)
        if stream is not None:
            for consumer in list(stream.consumers):
                await consumer.abort()
            stream.close()

    async def _enqueue(
        self, subject: str, data: bytes, hdrs: dict[str, str] | None, msg_id: str | None, timeout_s: float
    ) -> base.EnqueueResult:
        stream = next(
            (s for s in self.broker.streams.values() if any(subject_matches(p, subject) for p in s.spec.subjects)),
            None,
        )
        if stream is None:
            raise NoResponders(f"no stream captures {subject!r}")
        if 0 < stream.spec.max_msg_bytes < base.message_size(data, hdrs):
            raise PayloadTooLarge(f"message exceeds the stream's max_msg_bytes of {stream.spec.max_msg_bytes}")
        now = time.monotonic()
        if msg_id:
            stream.dedupe = {k: v for k, v in stream.dedupe.items() if v[0] > now}
            if msg_id in stream.dedupe:
                return base.EnqueueResult(stream.spec.stream, stream.dedupe[msg_id][1], True)
        seq = next(stream.seq)
        if msg_id:
            stream.dedupe[msg_id] = (now + stream.spec.duplicate_window_s, seq)
        entry = _Entry(seq, subject, data, dict(hdrs or {}))
        stream.entries[seq] = entry
        stream.ready.put_nowait(entry)
        return base.EnqueueResult(stream.spec.stream, seq, False)

    async def consume(
        self, spec: base.WorkQueueSpec, handler: base.WorkHandler, *, concurrency: int = 1
    ) -> base.Subscription:
        self._check_open()
        stream = self.broker.streams.get(spec.stream)
        if stream is None:
            raise NoResponders(f"no work queue {spec.stream!r}; call ensure_work_queue first")
        consumer = _LocalConsumer(self, stream, handler, base.Runner(spec.stream, concurrency))
        stream.consumers.add(consumer)
        self.consumers.add(consumer)
        consumer.start()
        return consumer

    async def queue_stats(self, spec: base.WorkQueueSpec) -> base.QueueStats:
        stream = self.broker.streams.get(spec.stream)
        if stream is None:
            raise NoResponders(f"no work queue {spec.stream!r}")
        inflight = sum(1 for e in stream.entries.values() if e.inflight)
        return base.QueueStats(len(stream.entries) - inflight, inflight, stream.redelivered)

    def dead_letters(self, spec: base.WorkQueueSpec) -> list[tuple[int, bytes]]:
        """(sequence, data) of messages that reached max_deliver (NATS reports these as advisories)."""
        stream = self.broker.streams.get(spec.stream)
        return [] if stream is None else [(e.seq, e.data) for e in stream.dead]

    async def close(self, drain: bool = False) -> None:
        if self._closed:
            return
        subs: list[base.Subscription] = [*self.subs, *self.consumers]
        for sub in subs:
            if drain:
                await sub.stop()
            else:
                await sub.abort()
        self._closed = True
