"""Hostile input for every entry point of a running deployment: the runner that tries each case of the corpora
(`scout_testbed.hostile_cases`) and counts how it ended.

Entry points (`ENTRY_POINTS`) and what "handled" means for each:

* ``http`` (``POST /v1/ask``), ``ask``, ``plan``, ``encode`` (NATS request/reply): a typed `ErrorReply` with the
  case's expected code (and, over HTTP, the status `scout_services.selector.main.HTTP_STATUS` maps it to),
  no stack trace;
* ``decode`` (the JetStream work queue): a typed `ErrorReply` on the request's ``reply_to`` when the request can be
  read and names a legitimate reply subject, otherwise on ``<root>.errors`` (unreadable work, or a ``reply_to``
  that would make the decoder publish into a request subject);
* ``link`` (``link.<device>``, publish only: there is nobody to reply to): rejected by the policy and counted in its
  ``scout_errors_total{op="link"}``, the device's link state unchanged;
* ``result`` (the selector's result subject, publish only): ignored, while a request in flight there still gets
  its own answer.

After each entry point's cases, a well-formed request on the same entry point must still be served.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from scout_runtime.bus import Msg, NatsBus
from scout_runtime.errors import ScoutError
from scout_runtime.messages import (
    AskReply,
    DecodeResult,
    EncodeReply,
    ErrorReply,
    LinkState,
    Plan,
    PlanRequest,
    parse,
    parse_reply,
)
from scout_runtime.rpc import call
from scout_runtime.settings import Settings
from scout_runtime.store import RedisStore
from scout_testbed.hostile_cases import (
    DEVICE,
    ENTRY_POINTS,
    Fixtures,
    HostileCase,
    ask_body,
    ask_cases,
    decode_cases,
    encode_cases,
    good_decode,
    good_encode,
    http_cases,
    link_cases,
    plan_cases,
    result_cases,
    stage_fixtures,
)

__all__ = [
    "ENTRY_POINTS",
    "EntryReport",
    "HostileReport",
    "Target",
    "run_decode",
    "run_hostile",
    "run_http",
    "run_link",
    "run_request_reply",
    "run_result",
]


# --- the runner ----------------------------------------------------------------------------------------------
@dataclass
class Target:
    """How to reach a running deployment (credentials inside ``settings``)."""

    settings: Settings
    http_url: str
    open_store: Callable[[], RedisStore]
    policy_metrics_url: str
    selector_instance: str
    alive: Callable[[], bool]
    model: str = "smollm2-135m"


class EntryReport(BaseModel):
    """How the cases of one entry point ended."""

    entry: str
    surface: str
    tried: int
    handled: int
    """Ended as required: the expected typed error (publish-only entry points: rejected / ignored, see module)."""
    typed: int
    """Answered with some typed `ErrorReply` (publish-only: not applicable, equals ``handled``)."""
    unhandled: int
    by_category: dict[str, int]
    by_code: dict[str, int]
    still_serving: bool
    failures: list[str] = Field(default_factory=list)


class HostileReport(BaseModel):
    entries: list[EntryReport]
    tried: int
    handled: int
    all_handled: bool
    all_serving: bool
    roles_alive: bool
    seconds: float


SURFACES = {
    "http": "POST /v1/ask (selector HTTP)",
    "ask": "scout.v1.ask (request/reply)",
    "plan": "scout.v1.plan (request/reply)",
    "encode": "scout.v1.encode (request/reply)",
    "decode": "scout.v1.decode (JetStream work queue)",
    "link": "scout.v1.link.<device> (publish; policy)",
    "result": "scout.v1.result.<selector> (publish; selector)",
}


def _report(
    entry: str,
    cases: Sequence[HostileCase],
    outcomes: Sequence[tuple[bool, bool, str]],
    still_serving: bool,
) -> EntryReport:
    """``outcomes``: per case (handled, typed, code seen)."""
    return EntryReport(
        entry=entry,
        surface=SURFACES[entry],
        tried=len(cases),
        handled=sum(h for h, _, _ in outcomes),
        typed=sum(t for _, t, _ in outcomes),
        unhandled=sum(not h for h, _, _ in outcomes),
        by_category=dict(Counter(c.category for c in cases)),
        by_code=dict(Counter(code for _, _, code in outcomes)),
        still_serving=still_serving,
        failures=[f"{c.name}: got {code}" for c, (h, _, code) in zip(cases, outcomes, strict=True) if not h][:20],
    )


async def run_http(target: Target, cases: Sequence[HostileCase]) -> EntryReport:
    import aiohttp

    url = target.http_url.rstrip("/") + "/v1/ask"
    outcomes: list[tuple[bool, bool, str]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for c in cases:
            try:
                async with session.post(url, data=c.data, headers={"Content-Type": "application/json"}) as resp:
                    status, raw = resp.status, await resp.read()
            except aiohttp.ClientError as e:
                outcomes.append((False, False, f"connection error {type(e).__name__}"))
                continue
            try:
                error = parse(ErrorReply, raw)
            except ScoutError:
                outcomes.append((False, False, f"HTTP {status}, not an ErrorReply"))
                continue
            ok = error.code == c.expect and (c.http_status is None or status == c.http_status)
            ok = ok and "Traceback" not in error.message
            outcomes.append((ok, True, error.code.value if status == c.http_status else f"{error.code.value}/{status}"))
        async with session.post(url, data=ask_body()) as resp:
            serving = resp.status == 200 and parse(AskReply, await resp.read()).mode == "local"
    return _report("http", cases, outcomes, serving)


async def _request_cases(
    bus: NatsBus, entry: str, subject: str, cases: Sequence[HostileCase]
) -> list[tuple[bool, bool, str]]:
    outcomes: list[tuple[bool, bool, str]] = []
    for c in cases:
        try:
            msg = await bus.request(subject, c.data, timeout_s=60)
        except ScoutError as e:
            outcomes.append((False, False, f"no reply ({e.code.value})"))
            continue
        try:
            error = parse(ErrorReply, msg.data)
        except ScoutError:
            outcomes.append((False, False, "not an ErrorReply"))
            continue
        outcomes.append((error.code == c.expect and "Traceback" not in error.message, True, error.code.value))
    return outcomes


async def run_request_reply(
    target: Target, bus: NatsBus, entry: str, cases: Sequence[HostileCase], fx: Fixtures | None
) -> EntryReport:
    subjects = target.settings.subjects()
    subject = {"ask": subjects.ask, "plan": subjects.plan, "encode": subjects.encode}[entry]
    outcomes = await _request_cases(bus, entry, subject, cases)
    serving = False
    with contextlib.suppress(ScoutError):
        if entry == "ask":
            reply = parse(AskReply, (await bus.request(subject, ask_body(), timeout_s=120)).data)
            serving = reply.mode == "local"
        elif entry == "plan":
            req = PlanRequest(request_id=uuid.uuid4().hex, device_id=DEVICE, context_tokens=10, deadline_ms=1000)
            serving = (await call(bus, subject, req, Plan, timeout_s=30)).request_id == req.request_id
        else:
            assert fx is not None
            token = f"hostile-ok-{uuid.uuid4().hex[:8]}"
            enc = await call(bus, subject, good_encode(fx, subjects.result(token)), EncodeReply, timeout_s=120)
            serving = enc.blob_bytes > 0
    return _report(entry, cases, outcomes, serving)


async def run_decode(
    target: Target, bus: NatsBus, cases: Sequence[HostileCase], fx: Fixtures, token: str
) -> EntryReport:
    subjects = target.settings.subjects()
    answers: dict[str, ErrorReply | DecodeResult] = {}
    errors: list[ErrorReply] = []
    on_ask: list[bytes] = []

    async def on_reply(msg: Msg) -> None:
        try:
            result = parse_reply(DecodeResult, msg.data)
            answers[result.request_id] = result
        except ScoutError as e:
            answers[e.request_id or ""] = ErrorReply.from_error(e)

    async def on_error(msg: Msg) -> None:
        with contextlib.suppress(ScoutError):
            errors.append(parse(ErrorReply, msg.data))

    async def on_ask_msg(msg: Msg) -> None:
        on_ask.append(msg.data)

    subs = [
        await bus.subscribe(subjects.result(token), on_reply, concurrency=4),
        await bus.subscribe(subjects.errors, on_error),
        await bus.subscribe(subjects.ask, on_ask_msg, queue=None),
    ]
    try:
        for c in cases:
            await bus.enqueue(subjects.decode, c.data, msg_id=uuid.uuid4().hex)
        readable = [c for c in cases if c.readable]
        anonymous = Counter((c.expect.value if c.expect else "?") for c in cases if not c.readable and not c.request_id)
        named = {c.request_id for c in cases if not c.readable and c.request_id}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            got_named = {e.request_id for e in errors if e.request_id in named}
            if (
                all(c.request_id in answers for c in readable)
                and got_named == named
                and len([e for e in errors if e.request_id is None]) >= sum(anonymous.values())
            ):
                break
            await asyncio.sleep(0.1)
        seen_anonymous = Counter(e.code.value for e in errors if e.request_id is None)
        outcomes: list[tuple[bool, bool, str]] = []
        for c in cases:
            if c.readable:
                a = answers.get(c.request_id or "")
                if isinstance(a, ErrorReply):
                    outcomes.append((a.code == c.expect, True, a.code.value))
                else:
                    outcomes.append((False, False, "no reply" if a is None else "an answer"))
            elif c.request_id:
                e = next((e for e in errors if e.request_id == c.request_id), None)
                outcomes.append((e is not None and e.code == c.expect, e is not None, e.code.value if e else "nothing"))
            else:
                code = c.expect.value if c.expect else "?"
                ok = seen_anonymous[code] > 0
                if ok:
                    seen_anonymous[code] -= 1
                outcomes.append((ok, ok, code if ok else "nothing on the errors subject"))
        # Still serving: a well-formed decode is answered with a result.
        good = good_decode(fx, subjects.result(token))
        await bus.enqueue(subjects.decode, good.to_bytes(), msg_id=good.request_id)
        deadline = time.monotonic() + 120
        while good.request_id not in answers and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        serving = isinstance(answers.get(good.request_id), DecodeResult) and not on_ask
    finally:
        for sub in subs:
            await sub.stop(drain_timeout_s=1)
    report = _report("decode", cases, outcomes, serving)
    if on_ask:
        report.failures.append(f"a decoder published {len(on_ask)} message(s) on the ask subject")
    return report


def _link_errors(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(m.group(1)) for m in re.finditer(r'^scout_errors_total\{[^}]*op="link"[^}]*\} ([0-9.e+-]+)$', text, re.M)
    )


async def run_link(target: Target, bus: NatsBus, seed: int, random_n: int) -> EntryReport:
    subjects = target.settings.subjects()
    pairs = link_cases(seed, random_n)
    before = await asyncio.to_thread(_link_errors, target.policy_metrics_url)
    for c, device in pairs:
        await bus.publish(subjects.link(device), c.data)
    deadline = time.monotonic() + 30
    rejected = 0.0
    while time.monotonic() < deadline:
        rejected = await asyncio.to_thread(_link_errors, target.policy_metrics_url) - before
        if rejected >= len(pairs):
            break
        await asyncio.sleep(0.1)
    # Still serving, and the hostile states changed nothing: the device's rate is the one set now.
    rate = 123_456.0 + random.Random(seed).randrange(1000)
    await bus.publish(
        subjects.link(DEVICE), LinkState(device_id=DEVICE, rate_bps=rate, source="shaper", at=time.time()).to_bytes()
    )
    serving = False
    deadline = time.monotonic() + 15
    while not serving and time.monotonic() < deadline:
        req = PlanRequest(request_id=uuid.uuid4().hex, device_id=DEVICE, context_tokens=10, deadline_ms=1000)
        serving = (await call(bus, subjects.plan, req, Plan, timeout_s=10)).bandwidth_bps == rate
        await asyncio.sleep(0.05)
    cases = [c for c, _ in pairs]
    handled = int(min(rejected, len(pairs)))
    outcomes = [(i < handled, i < handled, "rejected" if i < handled else "not counted") for i in range(len(cases))]
    return _report("link", cases, outcomes, serving)


async def run_result(target: Target, bus: NatsBus, fx: Fixtures, seed: int, random_n: int) -> EntryReport:
    """Garbage and stray results on the selector's result subject while one of its asks is in flight."""
    import aiohttp

    subjects = target.settings.subjects()
    token = re.sub(r"[^A-Za-z0-9_-]", "-", f"sel-{target.selector_instance}")[:64]
    subject = subjects.result(token)
    cases = result_cases(fx.model, seed, random_n)
    body = ask_body(mode="text", max_new_tokens=2, document="Paris is the capital of France. " * 4)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:

        async def in_flight() -> tuple[int, bytes]:
            async with session.post(target.http_url.rstrip("/") + "/v1/ask", data=body) as resp:
                return resp.status, await resp.read()

        pending = asyncio.create_task(in_flight())
        for c in cases:
            await bus.publish(subject, c.data)
        status, raw = await pending
    serving = False
    with contextlib.suppress(ScoutError):
        reply = parse(AskReply, raw)
        serving = status == 200 and reply.mode == "text" and reply.answer != "forged"
    outcomes = [(serving, serving, "ignored") for _ in cases]
    return _report("result", cases, outcomes, serving)


async def run_hostile(
    target: Target,
    lm: Any,
    *,
    question: str,
    document: str,
    seed: int = 0,
    random_n: int = 16,
    entries: Sequence[str] = ENTRY_POINTS,
) -> HostileReport:
    """Every case of every entry point in ``entries``, in turn, then the counts (see the module docstring)."""
    t0 = time.perf_counter()
    subjects = target.settings.subjects()
    token = f"hostile-{uuid.uuid4().hex[:8]}"
    store = target.open_store()
    try:
        fx = await stage_fixtures(store, lm, target.model, question, document)
    finally:
        await store.close()
    bus = await NatsBus.connect(target.settings, name="hostile", poll_s=0.2)
    reports: list[EntryReport] = []
    try:
        for entry in entries:
            if entry == "http":
                reports.append(await run_http(target, http_cases(seed, random_n)))
            elif entry == "ask":
                reports.append(await run_request_reply(target, bus, "ask", ask_cases(seed, random_n), fx))
            elif entry == "plan":
                reports.append(await run_request_reply(target, bus, "plan", plan_cases(seed, random_n), fx))
            elif entry == "encode":
                cases = encode_cases(fx, subjects.result(token), seed, random_n)
                reports.append(await run_request_reply(target, bus, "encode", cases, fx))
            elif entry == "decode":
                cases = decode_cases(fx, subjects.result(token), subjects.ask, seed, random_n)
                reports.append(await run_decode(target, bus, cases, fx, token))
            elif entry == "link":
                reports.append(await run_link(target, bus, seed, max(4, random_n // 2)))
            elif entry == "result":
                reports.append(await run_result(target, bus, fx, seed, max(4, random_n // 2)))
            else:
                raise ValueError(f"unknown entry point {entry!r}; known: {', '.join(ENTRY_POINTS)}")
    finally:
        await bus.close()
    return HostileReport(
        entries=reports,
        tried=sum(r.tried for r in reports),
        handled=sum(r.handled for r in reports),
        all_handled=all(r.unhandled == 0 and not r.failures for r in reports),
        all_serving=all(r.still_serving for r in reports),
        roles_alive=target.alive(),
        seconds=time.perf_counter() - t0,
    )
