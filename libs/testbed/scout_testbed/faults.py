"""Fault scenarios against a running `scout_testbed.testbed.Deployment`,
each with requests in flight when the fault hits,
each ending in a `FaultOutcome` that says what every request got and whether that is what the design promises.

* ``decoder_kill9``: ``kill -9`` of a decoder working on a request. The work queue redelivers it after the ack
  wait; every request is answered exactly once (client inbox and result tap both count one reply).
* ``decoder_stall``: the decoder working on a request freezes (SIGSTOP) past the ack wait, so the request goes to
  the other decoder, and resumes (SIGCONT) after that one answered: still exactly one reply.
* ``redis_restart``: Redis dies (SIGKILL, no persistence) and comes back empty while KV blobs and documents are
  staged. Each in-flight request is answered or fails with a typed error (``blob_missing`` for a blob that is
  gone), none hangs, none is answered twice; afterwards the deployment serves again without any restart.
* ``nats_restart``: nats-server restarts (SIGTERM, JetStream on disk) with requests in flight. Every role and client
  reconnects by itself; each in-flight request completes, fails with a typed error, or, where core NATS dropped a
  reply during the outage (at-most-once), ends in the client's timeout; afterwards new requests are answered.
* ``link_zero``: the device's uplink drops to zero, reported the way the shaper reports it (`LinkState`,
  ``source="shaper"``, on ``link.<device>``). The policy falls back (``local`` at rate 0, ``scout`` at a trickle)
  and the answers come back before the deadline.

The pass criteria are computed here (not only asserted by tests), so the report shows them for every run.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from scout_runtime.bus import NatsBus, WorkQueueSpec
from scout_runtime.messages import LinkState, Plan, PlanRequest
from scout_runtime.rpc import call
from scout_testbed.launcher import RoleProcess
from scout_testbed.soak import Harness, RequestRecord, SoakDocument, parse_point
from scout_testbed.testbed import Deployment

__all__ = [
    "FAULTS",
    "FaultOutcome",
    "decoder_kill9",
    "decoder_stall",
    "link_zero",
    "nats_restart",
    "redis_restart",
    "run_fault",
]


class FaultOutcome(BaseModel):
    """One fault scenario's result."""

    name: str
    fault: str
    expectation: str
    passed: bool
    outcome: str
    """One line: what happened to the requests in flight and after."""
    sent: int
    answered: int
    errors_by_code: dict[str, int]
    lost: int
    duplicated: int
    seconds: float
    details: dict[str, Any] = Field(default_factory=dict)
    requests: list[RequestRecord] = Field(default_factory=list)


def _counts(records: Sequence[RequestRecord]) -> dict[str, Any]:
    return {
        "sent": len(records),
        "answered": sum(r.outcome == "answered" for r in records),
        "errors_by_code": dict(Counter(r.code or "?" for r in records if r.outcome == "error")),
        "lost": sum(r.outcome == "lost" for r in records),
        "duplicated": sum(r.duplicated for r in records),
    }


def _describe(records: Sequence[RequestRecord]) -> str:
    c = _counts(records)
    errors = ", ".join(f"{n} {code}" for code, n in sorted(c["errors_by_code"].items())) or "none"
    return (
        f"{c['answered']}/{c['sent']} answered, typed errors: {errors}, lost {c['lost']}, duplicated {c['duplicated']}"
    )


def _readyz(proc: RoleProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.ports['metrics']}/readyz", timeout=2) as r:
            return r.status == 200 and bool(json.loads(r.read()).get("ready"))
    except (OSError, ValueError):
        return False


async def wait_all_ready(dep: Deployment, timeout_s: float = 60.0) -> float:
    """Seconds until every live role's /readyz answers 200 again (bus and stores reconnected)."""
    t0 = time.perf_counter()
    while True:
        procs = [p for p in dep.procs.values() if p.alive]
        ready = await asyncio.gather(*(asyncio.to_thread(_readyz, p) for p in procs))
        if all(ready):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout_s:
            names = [p.name for p, ok in zip(procs, ready, strict=True) if not ok]
            raise TimeoutError(f"roles not ready after {timeout_s:.0f} s: {', '.join(names)}")
        await asyncio.sleep(0.2)


async def _working_decoder(dep: Deployment, timeout_s: float = 90.0) -> RoleProcess | None:
    """A live decoder with a request in flight (its ``scout_inflight`` gauge), polled every 30 ms."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in dep.decoder_procs():
            if proc.alive:
                try:
                    busy = await asyncio.to_thread(proc.inflight) >= 1
                except OSError:
                    continue
                if busy:
                    return proc
        await asyncio.sleep(0.03)
    return None


def _grace_s(dep: Deployment) -> float:
    """How long after the last reply a late duplicate could still arrive (a redelivery after the ack wait)."""
    return dep.ack_wait_s + 2.0


# --- kill -9 of a decoder ------------------------------------------------------------------------------------
async def decoder_kill9(
    dep: Deployment, docs: Sequence[SoakDocument], *, inflight: int = 4, max_new_tokens: int = 24, restart: bool = True
) -> FaultOutcome:
    """``inflight`` text-mode asks at once; SIGKILL the first decoder seen working; all answered exactly once."""
    t0 = time.perf_counter()
    await asyncio.to_thread(dep.ensure_decoders)
    async with Harness(dep.settings(), dep.http_url) as h:
        for c in range(inflight):
            await h.client(c)
        pending = [
            asyncio.create_task(
                h.ask(c, docs[c % len(docs)], "text", device_id=f"kill-{c}", max_new_tokens=max_new_tokens)
            )
            for c in range(inflight)
        ]
        victim = await _working_decoder(dep)
        if victim is not None:
            victim.popen.send_signal(signal.SIGKILL)
        records = list(await asyncio.gather(*pending))
        await asyncio.sleep(_grace_s(dep))
        h.finalize(records)
    rc = victim.popen.wait(10) if victim is not None else None
    redelivered = [r.request_id for r in records if (r.deliveries or 0) >= 2]
    c = _counts(records)
    passed = (
        victim is not None
        and rc == -signal.SIGKILL
        and c["answered"] == c["sent"]
        and c["lost"] == 0
        and c["duplicated"] == 0
        and len(redelivered) >= 1
        and all(r.client_replies == 1 and r.tap_results == 1 for r in records)
    )
    if restart:
        await asyncio.to_thread(dep.ensure_decoders)
    return FaultOutcome(
        name="decoder_kill9",
        fault=f"kill -9 of the decoder working on a request ({inflight} text asks in flight)",
        expectation="redelivery after the ack wait; every request answered exactly once",
        passed=passed,
        outcome=f"{_describe(records)}; {len(redelivered)} redelivered (deliveries >= 2)",
        seconds=time.perf_counter() - t0,
        details={
            "victim": victim.name if victim is not None else None,
            "victim_exit": rc,
            "redelivered": redelivered,
            "deliveries": [r.deliveries for r in records],
        },
        requests=records,
        **c,
    )


# --- a decoder stalls past the ack wait, then resumes ----------------------------------------------------------
async def decoder_stall(
    dep: Deployment, docs: Sequence[SoakDocument], *, max_new_tokens: int = 32, timeout_s: float = 150.0
) -> FaultOutcome:
    """SIGSTOP the decoder working on an ask for longer than the ack wait (a GC pause, a frozen VM, a starved
    CPU: its heartbeats stop), so the work queue hands the request to the other decoder; SIGCONT it once the
    client has its answer, and let it finish its own decode. The request must be answered exactly once: the
    resumed decoder finds the reply the other one sent and sends none of its own."""
    t0 = time.perf_counter()
    await asyncio.to_thread(dep.ensure_decoders)
    stalled_s = 0.0
    async with Harness(dep.settings(), dep.http_url) as h:
        await h.client(0)
        pending = asyncio.create_task(
            h.ask(0, docs[0], "text", device_id="stall-0", max_new_tokens=max_new_tokens, timeout_s=timeout_s)
        )
        victim = await _working_decoder(dep)
        if victim is not None:
            victim.popen.send_signal(signal.SIGSTOP)
            t_stop = time.perf_counter()
        try:
            (record,) = await asyncio.gather(pending)
        finally:
            if victim is not None:
                stalled_s = time.perf_counter() - t_stop
                victim.popen.send_signal(signal.SIGCONT)
        # The resumed decoder finishes its (now superfluous) decode: wait until it is idle, then for stragglers.
        deadline = time.monotonic() + 120
        while victim is not None and time.monotonic() < deadline:
            try:
                if await asyncio.to_thread(victim.inflight) < 1:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        h.finalize([record])
    passed = (
        victim is not None
        and record.outcome == "answered"
        and (record.deliveries or 0) >= 2
        and record.client_replies == 1
        and record.tap_results == 1
        and dep.all_alive()
    )
    return FaultOutcome(
        name="decoder_stall",
        fault=f"the decoder working on a request frozen (SIGSTOP) past the {dep.ack_wait_s:g} s ack wait, "
        "resumed (SIGCONT) after the other decoder answered",
        expectation="the request is redelivered and answered once; the resumed decoder sends no second reply",
        passed=passed,
        outcome=f"{_describe([record])}; answered on delivery {record.deliveries}; results on the result subject: "
        f"{', '.join(record.results_from) or 'none'}",
        seconds=time.perf_counter() - t0,
        details={
            "victim": victim.name if victim is not None else None,
            "stalled_s": stalled_s,
            "results_from": record.results_from,
        },
        requests=[record],
        **_counts([record]),
    )


# --- Redis restarted while blobs are staged ------------------------------------------------------------------
REDIS_POINTS = ("full", "int8", "int4@0.5", "mixed", "text", "scout@0.5", "local")


async def _queued(bus: NatsBus, dep: Deployment) -> int:
    stats = await bus.queue_stats(WorkQueueSpec.for_decode(dep.settings()))
    return stats.pending + stats.ack_pending


async def redis_restart(
    dep: Deployment, docs: Sequence[SoakDocument], *, points: Sequence[str] = REDIS_POINTS, timeout_s: float = 150.0
) -> FaultOutcome:
    """Asks in flight while the decoders are held (SIGSTOP), so every cloud request's blob or document is staged
    and its decode request queued when Redis is killed and started empty; then the decoders go on (SIGCONT), and
    two more asks follow.

    Holding the decoders is what makes "while blobs are staged" exact rather than a race with a fast decoder: each
    cloud request is then known to be between its upload and its fetch when its data disappears.
    """
    t0 = time.perf_counter()
    admin = dep.admin_redis()
    prefix = dep.settings().key_prefix()
    cloud = sum(parse_point(p)[0] != "local" for p in points)
    bus = await NatsBus.connect(dep.settings(), name="fault-redis", poll_s=0.2)
    decoders = [p for p in dep.decoder_procs() if p.alive]
    held = False
    try:
        async with Harness(dep.settings(), dep.http_url) as h:
            for c in range(len(points)):
                await h.client(c)
            for proc in decoders:
                proc.popen.send_signal(signal.SIGSTOP)
            held = True
            pending = [
                asyncio.create_task(h.ask(c, docs[c % len(docs)], p, device_id=f"redis-{c}", timeout_s=timeout_s))
                for c, p in enumerate(points)
            ]
            deadline = time.monotonic() + 120
            while await _queued(bus, dep) < cloud and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            queued = await _queued(bus, dep)
            blobs = [k async for k in admin.scan_iter(match=f"{prefix}blob:*", count=200)]
            documents = [k async for k in admin.scan_iter(match=f"{prefix}doc:*", count=200)]
            await admin.aclose()
            away_s = await asyncio.to_thread(dep.servers.redis.restart, signal.SIGKILL)
            for proc in decoders:
                proc.popen.send_signal(signal.SIGCONT)
            held = False
            inflight = list(await asyncio.gather(*pending))
            await asyncio.sleep(_grace_s(dep))
            h.finalize(inflight)
            ready_s = await wait_all_ready(dep)
            after = [
                await h.ask(0, docs[0], "int8", device_id="redis-after", timeout_s=timeout_s),
                await h.ask(1, docs[1 % len(docs)], "text", device_id="redis-after", timeout_s=timeout_s),
            ]
            await asyncio.sleep(1.0)
            h.finalize(after)
    finally:
        if held:
            for proc in decoders:
                proc.popen.send_signal(signal.SIGCONT)
        await bus.close()
    c = _counts(inflight)
    passed = (
        queued >= cloud
        and bool(blobs)
        and all(r.outcome in ("answered", "error") for r in inflight)
        and c["errors_by_code"].get("blob_missing", 0) >= 1
        and c["duplicated"] == 0
        and all(r.outcome == "answered" and not r.duplicated for r in after)
        and dep.all_alive()
    )
    return FaultOutcome(
        name="redis_restart",
        fault=f"Redis killed and restarted empty with {len(blobs)} blob key(s) and {len(documents)} document key(s) "
        f"staged and {queued} decode request(s) queued ({len(points)} asks in flight)",
        expectation="each in-flight request answered or failed with a clear typed error (blob_missing), none hangs, "
        "none duplicated; the next requests answered without restarting any role",
        passed=passed,
        outcome=f"in flight: {_describe(inflight)}; afterwards: {_describe(after)}",
        seconds=time.perf_counter() - t0,
        details={
            "staged_blob_keys": len(blobs),
            "staged_document_keys": len(documents),
            "queued_decodes": queued,
            "redis_away_s": away_s,
            "roles_ready_again_s": ready_s,
            "after": [r.model_dump() for r in after],
            "points": list(points),
        },
        requests=inflight,
        **c,
    )


# --- nats-server restarted -----------------------------------------------------------------------------------
NATS_POINTS = ("text", "int8", "scout@0.5", "full", "local", "int4@0.5")


async def nats_restart(
    dep: Deployment,
    docs: Sequence[SoakDocument],
    *,
    points: Sequence[str] = NATS_POINTS,
    timeout_s: float = 60.0,
    after_s: float = 1.0,
    down_s: float = 2.0,
) -> FaultOutcome:
    """Asks in flight; ``after_s`` later nats-server stops, stays down ``down_s`` and starts again; then two more
    asks once every role is ready."""
    t0 = time.perf_counter()
    async with Harness(dep.settings(), dep.http_url) as h:
        for c in range(len(points)):
            await h.client(c)
        # A 30 s deadline: the selector then gives up on a lost hand-off after its 45 s request timeout, well
        # within the client's patience, so such a request ends in a typed timeout the client receives.
        pending = [
            asyncio.create_task(
                h.ask(c, docs[c % len(docs)], p, device_id=f"nats-{c}", timeout_s=timeout_s, deadline_ms=30_000)
            )
            for c, p in enumerate(points)
        ]
        await asyncio.sleep(after_s)
        away_s = await asyncio.to_thread(dep.servers.nats.restart, signal.SIGTERM, down_s)
        inflight = list(await asyncio.gather(*pending))
        ready_s = await wait_all_ready(dep)
        after = [
            await h.ask(0, docs[0], "int8", device_id="nats-after", timeout_s=timeout_s),
            await h.ask(1, docs[1 % len(docs)], "text", device_id="nats-after", timeout_s=timeout_s, transport="http"),
        ]
        await asyncio.sleep(_grace_s(dep))
        h.finalize([*inflight, *after])
    c = _counts(inflight)
    timed_out = [r.request_id for r in inflight if r.outcome == "lost"]
    late = [f"{r.late}" for r in inflight if r.outcome == "lost" and r.late]
    passed = (
        c["duplicated"] == 0
        and all(r.outcome == "answered" and not r.duplicated for r in after)
        and dep.all_alive()
        and all(r.latency_s is None or r.latency_s <= timeout_s for r in inflight)
    )
    return FaultOutcome(
        name="nats_restart",
        fault=f"nats-server stopped (SIGTERM, JetStream on disk) {after_s:g} s into {len(points)} asks in flight, "
        f"down {down_s:g} s, started again",
        expectation="every role and client reconnects by itself; in-flight requests complete or fail with a "
        "timeout (client side, after a reply core NATS dropped during the outage) or another typed error; "
        "none duplicated; new requests answered",
        passed=passed,
        outcome=f"in flight: {_describe(inflight)} ({len(timed_out)} ended in the client's {timeout_s:g} s "
        f"timeout{'; late replies: ' + ', '.join(late) if late else ''}); afterwards: {_describe(after)}",
        seconds=time.perf_counter() - t0,
        details={
            "nats_away_s": away_s,
            "roles_ready_again_s": ready_s,
            "client_timeouts": timed_out,
            "after": [r.model_dump() for r in after],
            "points": list(points),
        },
        requests=inflight,
        **c,
    )


# --- the link rate drops to zero -----------------------------------------------------------------------------
async def _policy_sees(bus: NatsBus, dep: Deployment, device: str, rate_bps: float, timeout_s: float = 15.0) -> Plan:
    """Publish the shaper's LinkState and poll the policy until it plans at that rate."""
    subjects = dep.settings().subjects()
    state = LinkState(device_id=device, rate_bps=rate_bps, source="shaper", at=time.time())
    await bus.publish(subjects.link(device), state.to_bytes())
    deadline = time.monotonic() + timeout_s
    while True:
        req = PlanRequest(request_id=uuid.uuid4().hex, device_id=device, context_tokens=150, deadline_ms=5000)
        plan = await call(bus, subjects.plan, req, Plan, timeout_s=10)
        if plan.bandwidth_bps == rate_bps or time.monotonic() > deadline:
            return plan
        await asyncio.sleep(0.05)


async def link_zero(
    dep: Deployment,
    docs: Sequence[SoakDocument],
    *,
    deadline_ms: int = 8000,
    rates: Sequence[float] = (1e10, 1e4, 0.0),
    timeout_s: float = 120.0,
) -> FaultOutcome:
    """For each rate in turn (fast, a trickle, zero): the shaper's LinkState, then an unforced ask; the policy's
    mode and whether the answer came before the deadline."""
    t0 = time.perf_counter()
    device = f"link-{uuid.uuid4().hex[:8]}"
    steps: list[dict[str, Any]] = []
    records: list[RequestRecord] = []
    bus = await NatsBus.connect(dep.settings(), name="fault-link", poll_s=0.2)
    try:
        async with Harness(dep.settings(), dep.http_url) as h:
            for i, rate in enumerate(rates):
                plan = await _policy_sees(bus, dep, device, rate)
                rec = await h.ask(
                    0, docs[i % len(docs)], "auto", device_id=device, deadline_ms=deadline_ms, timeout_s=timeout_s
                )
                records.append(rec)
                steps.append(
                    {
                        "rate_bps": rate,
                        "planned_mode": plan.mode,
                        "policy_saw_rate": plan.bandwidth_bps == rate,
                        "reply_mode": rec.mode,
                        "error": rec.code,
                        "answered_by": rec.answered_by,
                        "latency_s": rec.latency_s,
                        "deadline_s": deadline_ms / 1000.0,
                        "within_deadline": rec.latency_s is not None and rec.latency_s * 1000.0 <= deadline_ms,
                    }
                )
            await asyncio.sleep(1.0)
            h.finalize(records)
    finally:
        await bus.close()
    slow = [s for s in steps if s["rate_bps"] < 1e6]
    passed = (
        all(r.outcome == "answered" and not r.duplicated for r in records)
        and all(s["policy_saw_rate"] for s in steps)
        and all(s["reply_mode"] in ("scout", "local") and s["within_deadline"] for s in slow)
        and any(s["rate_bps"] == 0 and s["reply_mode"] == "local" and s["answered_by"] == "edge" for s in steps)
    )
    summary = "; ".join(
        f"{s['rate_bps']:g} bit/s -> {s['reply_mode'] or 'failed: ' + str(s['error'])} in "
        f"{s['latency_s'] or float('nan'):.2f} s"
        for s in steps
    )
    return FaultOutcome(
        name="link_zero",
        fault="the uplink drops to zero (shaper LinkState on link.<device>: fast, 10 kbit/s, then 0)",
        expectation=f"the policy falls back to scout (trickle) or local (zero) and the answer arrives within the "
        f"{deadline_ms} ms deadline",
        passed=passed,
        outcome=summary,
        seconds=time.perf_counter() - t0,
        details={"device_id": device, "steps": steps},
        requests=records,
        **_counts(records),
    )


FAULTS = {
    "decoder_kill9": decoder_kill9,
    "decoder_stall": decoder_stall,
    "redis_restart": redis_restart,
    "nats_restart": nats_restart,
    "link_zero": link_zero,
}


async def run_fault(name: str, dep: Deployment, docs: Sequence[SoakDocument], **kwargs: Any) -> FaultOutcome:
    """One scenario by name (`FAULTS`)."""
    return await FAULTS[name](dep, docs, **kwargs)
