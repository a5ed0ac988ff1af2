"""The bus contract, run against the in-process bus and against a real nats-server (JetStream) alike."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from runtime_helpers import BusFactory, eventually

from scout_runtime.bus import Bus, Msg, WorkItem, WorkQueueSpec, check_payload, message_size, normalize_headers
from scout_runtime.errors import BadRequest, BusClosed, NoResponders, PayloadTooLarge, Timeout
from scout_runtime.settings import Settings


# --- control: request/reply, publish/subscribe ---------------------------------------------------------------
async def test_request_reply_with_headers(bus: Bus, ns: str) -> None:
    async def echo(msg: Msg) -> None:
        await msg.respond(b"re:" + msg.data, {"X-Seen": msg.headers.get("X-Req", "")})

    await bus.subscribe(f"{ns}.echo", echo)
    reply = await bus.request(f"{ns}.echo", b"hello", {"X-Req": "42"}, timeout_s=2)
    assert reply.data == b"re:hello"
    assert reply.headers.get("X-Seen") == "42"


async def test_request_without_responder_is_typed(bus: Bus, ns: str) -> None:
    with pytest.raises(NoResponders):
        await bus.request(f"{ns}.nobody", b"x", timeout_s=2)


async def test_request_timeout_is_typed(bus: Bus, ns: str) -> None:
    async def silent(msg: Msg) -> None:
        return None

    await bus.subscribe(f"{ns}.silent", silent)
    t0 = time.monotonic()
    with pytest.raises(Timeout):
        await bus.request(f"{ns}.silent", b"x", timeout_s=0.2)
    assert time.monotonic() - t0 < 2


async def test_wildcard_subscription_and_fanout(make_bus: BusFactory, ns: str) -> None:
    a, b = await make_bus("a"), await make_bus("b")
    got_a: list[str] = []
    got_b: list[str] = []

    async def on_a(msg: Msg) -> None:
        got_a.append(msg.subject)

    async def on_b(msg: Msg) -> None:
        got_b.append(msg.subject)

    await a.subscribe(f"{ns}.link.*", on_a)
    await b.subscribe(f"{ns}.>", on_b)
    await asyncio.sleep(0.05)  # let NATS register the interest
    await a.publish(f"{ns}.link.dev1", b"1")
    await a.publish(f"{ns}.link.dev2", b"2")
    await a.publish(f"{ns}.other.x", b"3")
    await eventually(lambda: len(got_a) == 2 and len(got_b) == 3, what="deliveries")
    assert sorted(got_a) == [f"{ns}.link.dev1", f"{ns}.link.dev2"]


async def test_queue_group_spreads_and_delivers_once(make_bus: BusFactory, ns: str) -> None:
    client = await make_bus("client")
    seen: Counter[str] = Counter()
    who: dict[str, str] = {}

    def handler(name: str):
        async def on(msg: Msg) -> None:
            seen[msg.data.decode()] += 1
            who[msg.data.decode()] = name
            await asyncio.sleep(0.005)
            await msg.respond(name.encode())

        return on

    for name in ("r1", "r2"):
        server = await make_bus(name)
        await server.subscribe(f"{ns}.svc", handler(name), queue="svc", concurrency=4)
    await asyncio.sleep(0.05)
    replies = await asyncio.gather(*(client.request(f"{ns}.svc", str(i).encode(), timeout_s=5) for i in range(40)))
    assert len(replies) == 40
    assert all(v == 1 for v in seen.values()) and len(seen) == 40
    assert set(who.values()) == {"r1", "r2"}, "both queue-group members should take requests"


async def test_concurrency_limits_parallel_handlers(bus: Bus, ns: str) -> None:
    active = 0
    peak = 0

    async def slow(msg: Msg) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.03)
        active -= 1
        await msg.respond(b"ok")

    await bus.subscribe(f"{ns}.slow", slow, concurrency=3)
    await asyncio.gather(*(bus.request(f"{ns}.slow", b"", timeout_s=5) for _ in range(9)))
    assert peak == 3


async def test_handler_exception_does_not_kill_subscription(bus: Bus, ns: str) -> None:
    async def flaky(msg: Msg) -> None:
        if msg.data == b"boom":
            raise RuntimeError("bug")
        await msg.respond(b"fine")

    await bus.subscribe(f"{ns}.flaky", flaky)
    with pytest.raises(Timeout):
        await bus.request(f"{ns}.flaky", b"boom", timeout_s=0.2)
    assert (await bus.request(f"{ns}.flaky", b"ok", timeout_s=2)).data == b"fine"


# --- size and header checks ----------------------------------------------------------------------------------
def test_message_size_counts_the_nats_header_block() -> None:
    assert message_size(b"abc") == 3
    # "NATS/1.0\r\n" + "K: v\r\n" + "\r\n" = 10 + 6 + 2
    assert message_size(b"abc", {"K": "v"}) == 3 + 18
    assert check_payload(b"x" * 100, None, 100) == 100
    with pytest.raises(PayloadTooLarge):
        check_payload(b"x" * 100, {"K": "v"}, 110)


def test_headers_are_validated() -> None:
    assert normalize_headers({}) is None
    assert normalize_headers({" traceparent ": " 00-ab "}) == {"traceparent": "00-ab"}
    for bad in ({"Bad Key": "v"}, {"K": "a\r\nInjected: 1"}, {"K": "nul\0"}, {"": "v"}):
        with pytest.raises(BadRequest):
            normalize_headers(bad)


async def test_payload_too_large_fails_before_sending_and_connection_survives(bus: Bus, ns: str) -> None:
    limit = bus.max_payload
    assert limit == 1024 * 1024

    async def size(msg: Msg) -> None:
        await msg.respond(str(len(msg.data)).encode())

    await bus.subscribe(f"{ns}.size", size)
    # Exactly max_payload of body and no headers is accepted...
    assert (await bus.request(f"{ns}.size", b"x" * limit, timeout_s=5)).data == str(limit).encode()
    # ...but the same body plus a header is refused here, with a clear error, before NATS would cut the connection.
    with pytest.raises(PayloadTooLarge, match="headers"):
        await bus.publish(f"{ns}.size", b"x" * limit, {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    with pytest.raises(PayloadTooLarge):
        await bus.request(f"{ns}.size", b"x" * (limit + 1), timeout_s=1)
    assert bus.is_connected
    assert (await bus.request(f"{ns}.size", b"small", timeout_s=2)).data == b"5"


async def test_invalid_subjects_are_refused(bus: Bus) -> None:
    for subject in ("", "a b", "a\r\nPUB x 1"):
        with pytest.raises(BadRequest):
            await bus.publish(subject, b"x")


async def test_closed_bus_refuses(make_bus: BusFactory, ns: str) -> None:
    b = await make_bus("closing")
    await b.close()
    assert not b.is_connected
    with pytest.raises(BusClosed):
        await b.publish(f"{ns}.x", b"x")


# --- the work queue ------------------------------------------------------------------------------------------
async def test_ensure_work_queue_is_idempotent_and_updates(make_bus: BusFactory, work_queue: WorkQueueSpec) -> None:
    b = await make_bus("again")
    await b.ensure_work_queue(work_queue)
    await b.ensure_work_queue(work_queue.model_copy(update={"ack_wait_s": 2.0, "max_age_s": 120.0}))
    stats = await b.queue_stats(work_queue)
    assert stats.lag == 0


async def test_enqueue_without_a_stream_is_typed(bus: Bus, ns: str) -> None:
    with pytest.raises(NoResponders):
        await bus.enqueue(f"{ns}.nostream", b"x", timeout_s=2)


async def test_work_is_shared_by_two_consumers_and_processed_once(
    make_bus: BusFactory, work_queue: WorkQueueSpec
) -> None:
    producer = await make_bus("producer")
    processed: Counter[bytes] = Counter()
    by: dict[str, int] = {"w1": 0, "w2": 0}

    def worker(name: str):
        async def handle(item: WorkItem) -> None:
            processed[item.data] += 1
            by[name] += 1
            await asyncio.sleep(0.01)

        return handle

    for name in by:
        w = await make_bus(name)
        await w.consume(work_queue, worker(name))
    n = 30
    for i in range(n):
        await producer.enqueue(work_queue.subjects[0], f"job-{i}".encode(), msg_id=f"job-{i}")
    await eventually(lambda: sum(processed.values()) >= n, timeout_s=10, what="all jobs")
    await asyncio.sleep(0.3)  # nothing is delivered twice, even later
    assert len(processed) == n and set(processed.values()) == {1}
    assert by["w1"] > 0 and by["w2"] > 0, f"both consumers should take work: {by}"
    assert (await producer.queue_stats(work_queue)).lag == 0


async def test_duplicate_msg_id_is_enqueued_once(bus: Bus, work_queue: WorkQueueSpec) -> None:
    first = await bus.enqueue(work_queue.subjects[0], b"a", msg_id="req-1")
    again = await bus.enqueue(work_queue.subjects[0], b"a", msg_id="req-1")
    other = await bus.enqueue(work_queue.subjects[0], b"b", msg_id="req-2")
    assert not first.duplicate and again.duplicate and again.sequence == first.sequence
    assert other.sequence == first.sequence + 1
    assert (await bus.queue_stats(work_queue)).lag == 2


async def test_headers_travel_with_work(bus: Bus, work_queue: WorkQueueSpec) -> None:
    got: list[WorkItem] = []

    async def handle(item: WorkItem) -> None:
        got.append(item)

    await bus.consume(work_queue, handle)
    await bus.enqueue(work_queue.subjects[0], b"x", headers={"traceparent": "00-1-2-01"}, msg_id="h1")
    await eventually(lambda: len(got) == 1)
    item = got[0]
    assert item.headers["traceparent"] == "00-1-2-01"
    assert item.delivery_count == 1 and not item.redelivered and item.sequence >= 1


async def test_redelivery_after_consumer_dies_without_ack(make_bus: BusFactory, work_queue: WorkQueueSpec) -> None:
    producer = await make_bus("producer")
    doomed = await make_bus("doomed")
    taken = asyncio.Event()
    survivor_got: list[WorkItem] = []

    async def hang(item: WorkItem) -> None:
        taken.set()
        await asyncio.sleep(3600)

    async def finish(item: WorkItem) -> None:
        survivor_got.append(item)
        await item.ack()

    await doomed.consume(work_queue, hang)
    await producer.enqueue(work_queue.subjects[0], b"decode me", msg_id="r1")
    await asyncio.wait_for(taken.wait(), 5)
    await doomed.close()  # the replica dies: no ack, connection gone
    survivor = await make_bus("survivor")
    t0 = time.monotonic()
    await survivor.consume(work_queue, finish)
    await eventually(lambda: len(survivor_got) == 1, timeout_s=5, what="redelivery")
    assert survivor_got[0].data == b"decode me"
    assert survivor_got[0].delivery_count == 2 and survivor_got[0].redelivered
    assert time.monotonic() - t0 < work_queue.ack_wait_s + 2
    await asyncio.sleep(work_queue.ack_wait_s + 0.2)
    assert len(survivor_got) == 1, "acked work must not come back"
    assert (await producer.queue_stats(work_queue)).lag == 0


async def test_in_progress_extends_the_ack_deadline(bus: Bus, work_queue: WorkQueueSpec) -> None:
    deliveries: list[int] = []

    async def long_decode(item: WorkItem) -> None:
        deliveries.append(item.delivery_count)
        async with item.keep_alive(work_queue.ack_wait_s / 3):
            await asyncio.sleep(work_queue.ack_wait_s * 2.5)  # far past ack_wait, but reporting progress
        await item.ack()

    await bus.consume(work_queue, long_decode, concurrency=2)
    await bus.enqueue(work_queue.subjects[0], b"long", msg_id="long")
    await asyncio.sleep(work_queue.ack_wait_s * 3)
    assert deliveries == [1], "a replica reporting progress must not lose its work"


async def test_nak_redelivers_and_max_deliver_stops(bus: Bus, work_queue: WorkQueueSpec) -> None:
    seen: list[tuple[int, bool]] = []

    async def always_fail(item: WorkItem) -> None:
        seen.append((item.delivery_count, item.is_last_delivery))
        await item.nak()

    await bus.consume(work_queue, always_fail)
    await bus.enqueue(work_queue.subjects[0], b"poison", msg_id="poison")
    await eventually(lambda: len(seen) >= work_queue.max_deliver, timeout_s=5, what="max_deliver deliveries")
    await asyncio.sleep(work_queue.ack_wait_s + 0.3)
    assert seen == [(1, False), (2, False), (3, True)]


async def test_handler_exception_naks_and_return_acks(bus: Bus, work_queue: WorkQueueSpec) -> None:
    attempts: Counter[bytes] = Counter()

    async def fail_once(item: WorkItem) -> None:
        attempts[item.data] += 1
        if item.data == b"flaky" and item.delivery_count == 1:
            raise RuntimeError("transient")

    await bus.consume(work_queue, fail_once)
    await bus.enqueue(work_queue.subjects[0], b"flaky", msg_id="f")
    await bus.enqueue(work_queue.subjects[0], b"solid", msg_id="s")
    await eventually(lambda: attempts[b"flaky"] == 2 and attempts[b"solid"] == 1, what="retry")
    await asyncio.sleep(work_queue.ack_wait_s + 0.2)
    assert attempts == Counter({b"flaky": 2, b"solid": 1})


async def test_term_drops_without_redelivery(bus: Bus, work_queue: WorkQueueSpec) -> None:
    seen: list[int] = []

    async def refuse(item: WorkItem) -> None:
        seen.append(item.delivery_count)
        await item.term()
        await item.ack()  # settling twice is a no-op

    await bus.consume(work_queue, refuse)
    await bus.enqueue(work_queue.subjects[0], b"never", msg_id="never")
    await asyncio.sleep(work_queue.ack_wait_s + 0.3)
    assert seen == [1]


async def test_graceful_stop_finishes_in_flight_work(make_bus: BusFactory, work_queue: WorkQueueSpec) -> None:
    producer = await make_bus("producer")
    worker = await make_bus("worker")
    started = asyncio.Event()
    finished: list[bytes] = []

    async def handle(item: WorkItem) -> None:
        started.set()
        await asyncio.sleep(0.2)
        finished.append(item.data)

    sub = await worker.consume(work_queue, handle)
    await producer.enqueue(work_queue.subjects[0], b"in flight", msg_id="g")
    await asyncio.wait_for(started.wait(), 5)
    await sub.stop(drain_timeout_s=5)
    assert finished == [b"in flight"]
    assert (await producer.queue_stats(work_queue)).lag == 0


async def test_queue_stats_report_backlog(bus: Bus, work_queue: WorkQueueSpec) -> None:
    for i in range(3):
        await bus.enqueue(work_queue.subjects[0], b"x", msg_id=f"b{i}")
    stats = await bus.queue_stats(work_queue)
    assert stats.pending == 3 and stats.ack_pending == 0 and stats.lag == 3


async def test_work_payload_limit_includes_msg_id_header(bus: Bus, work_queue: WorkQueueSpec) -> None:
    with pytest.raises(PayloadTooLarge):
        await bus.enqueue(work_queue.subjects[0], b"x" * bus.max_payload, msg_id="too-big")


def test_decode_queue_spec_follows_settings(env_clean: pytest.MonkeyPatch) -> None:
    settings = Settings(namespace="staging", ack_wait_s=12.0, max_deliver=5, nak_delay_s=0.1)
    spec = WorkQueueSpec.for_decode(settings)
    assert spec.stream == "SCOUT_DECODE_STAGING" and spec.subjects == ("staging.scout.v1.decode",)
    assert spec.durable == "scout-decoders" and spec.ack_wait_s == 12.0 and spec.max_deliver == 5
    assert spec.max_msg_bytes == settings.max_message_bytes and spec.nak_delay_s == 0.1
    with pytest.raises(ValueError):
        WorkQueueSpec(stream="a.b", subjects=("x",), durable="d")
    with pytest.raises(ValueError):
        WorkQueueSpec(stream="s", subjects=("x y",), durable="d")
