"""End to end over real NATS (JetStream) and Redis, every role its own OS process (``scout serve ROLE``):

* every mode (full, int8, int4, mixed with a BitPlan, each with and without selection; scout, text, local) gives the
  answer, mode, retention, bit plan and bytes of the in-process library path (`scout.pipeline.answer_inprocess`)
  on real SQuAD v2 prompts, with SmolLM2 on both ends;
* the policy follows the link state it is sent and the request goes where it says;
* two decoders share a batch, each request answered exactly once; ``kill -9`` of the decoder working on a request
  still yields exactly one answer (redelivery after the short ack wait); SIGTERM lets a decoder finish first;
* one trace per request, with spans of all four services and correct parent links, at an OTLP/HTTP receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from stack import MIXED_PLAN, Proc, ServiceStack

from scout.datasets import Example
from scout.pipeline import InProcessAnswer, PolicyConfig, answer_inprocess
from scout_runtime.bus import Msg, NatsBus
from scout_runtime.errors import ScoutError
from scout_runtime.messages import AskReply, AskRequest, DecodeResult, LinkState, Plan, PlanRequest, parse_reply
from scout_runtime.rpc import call
from scout_runtime.settings import Settings
from scout_services.client import ask

pytestmark = pytest.mark.models

MAX_NEW = 6
ANSWERING = (0, 1, 3)
"""Examples of the `squad` sample on which SmolLM2 answers something within MAX_NEW tokens in every mode (on the
third it stops at once in some modes, and two empty answers are equal whatever the path)."""
_REFERENCES: dict[tuple[Any, ...], InProcessAnswer] = {}


def reference(
    lm: Any, ex: Example, mode: str | None, retention: float | None, max_new: int = MAX_NEW, **kw: Any
) -> InProcessAnswer:
    """The in-process library path's answer (memoised: several tests ask the same question the same way)."""
    key = (ex.id, mode, retention, max_new, tuple(sorted(kw.items())))
    if key not in _REFERENCES:
        _REFERENCES[key] = answer_inprocess(
            lm,
            lm,
            question=ex.question,
            document=ex.context,
            mode=mode,
            retention=retention,
            policy=PolicyConfig.for_model(lm.spec, mixed_plan=MIXED_PLAN),
            max_new_tokens=max_new,
            **kw,
        )
    return _REFERENCES[key]


def request(
    ex: Example,
    *,
    mode: str | None,
    retention: float | None = None,
    device: str = "car-1",
    max_new: int = MAX_NEW,
    deadline_ms: int = 60_000,
    **kw: Any,
) -> AskRequest:
    return AskRequest(
        request_id=uuid.uuid4().hex,
        device_id=device,
        document=ex.context,
        question=ex.question,
        deadline_ms=deadline_ms,
        max_new_tokens=max_new,
        mode=mode,
        retention=retention,
        **kw,
    )


async def send(settings: Settings, stack: ServiceStack, req: AskRequest, transport: str = "nats") -> AskReply:
    http = f"http://127.0.0.1:{stack.selector.ports['http']}" if transport == "http" else None
    return await ask(req, settings=settings, http_url=http, timeout_s=180)


class ResultTap:
    """Every decode result published in the namespace, by request id (to count replies, not just receive one)."""

    def __init__(self) -> None:
        self.results: list[DecodeResult] = []

    async def on_msg(self, msg: Msg) -> None:
        with contextlib.suppress(ScoutError):
            self.results.append(parse_reply(DecodeResult, msg.data))

    def count(self, request_id: str) -> int:
        return sum(1 for r in self.results if r.request_id == request_id)


async def tap_results(client: NatsBus, settings: Settings) -> ResultTap:
    tap = ResultTap()
    await client.subscribe(f"{settings.subjects().result_prefix}.>", tap.on_msg, concurrency=8)
    return tap


# --- every mode --------------------------------------------------------------------------------------------------
CONDITIONS = [
    ("full", None),
    ("full", 0.5),
    ("int8", None),
    ("int8", 0.5),
    ("int4", None),
    ("int4", 0.25),
    ("mixed", None),
    ("mixed", 0.5),
    ("scout", 0.5),
    ("text", None),
    ("local", None),
]


@pytest.mark.parametrize(("index", "mode", "retention"), [(i, *c) for i, c in enumerate(CONDITIONS)])
async def test_every_mode_gives_the_library_answer(
    index: int,
    mode: str,
    retention: float | None,
    stack: ServiceStack,
    settings: Settings,
    ref_lm: Any,
    squad: list[Example],
) -> None:
    ex = squad[ANSWERING[index % len(ANSWERING)]]
    transport = "http" if index % 2 else "nats"
    reply = await send(settings, stack, request(ex, mode=mode, retention=retention), transport)
    ref = reference(ref_lm, ex, mode, retention)
    assert (reply.mode, reply.retention) == (ref.mode, ref.retention) == (mode, retention or ref.retention)
    assert reply.answer == ref.answer and reply.answer, "an empty answer would make the comparison vacuous"
    assert reply.bytes_sent == ref.bytes_sent
    assert reply.plan is not None and reply.plan.bit_plan == ref.bit_plan
    assert reply.answered_by == ("edge" if mode == "local" else "cloud")
    assert {"tokenize", "prefill", "score", "plan", "decode", "generate", "total"} <= set(reply.timings)
    if mode == "mixed":
        assert reply.plan.bit_plan == MIXED_PLAN
    if mode in ("full", "int8", "int4", "mixed"):
        assert {"stage", "encode", "upload", "fetch", "queue"} <= set(reply.timings)
        assert reply.bytes_sent > 10_000
    if mode == "local":
        assert reply.bytes_sent == 0 and reply.cloud_model == ""


async def test_selection_and_quantization_shrink_what_is_sent(
    stack: ServiceStack, settings: Settings, squad: list[Example]
) -> None:
    ex = squad[0]
    sizes = {}
    for mode, retention in (("full", None), ("full", 0.5), ("int8", None), ("int4", None), ("scout", 0.5)):
        reply = await send(settings, stack, request(ex, mode=mode, retention=retention, max_new=1))
        sizes[(mode, retention)] = reply.bytes_sent
    assert sizes[("full", 0.5)] < sizes[("full", None)]
    assert sizes[("int4", None)] < sizes[("int8", None)] < sizes[("full", None)]
    assert sizes[("scout", 0.5)] < 1000


async def test_every_role_serves_health_readiness_and_metrics(
    stack: ServiceStack, settings: Settings, squad: list[Example]
) -> None:
    import json
    import urllib.request

    await send(settings, stack, request(squad[0], mode="int8", max_new=1))

    def get(port: int, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()

    for proc in [p for p in stack.procs.values() if p.alive]:
        port = proc.ports["metrics"]
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        status, body = await asyncio.to_thread(get, port, "/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["ready"] and ready["checks"] and all(ready["checks"].values()), proc.name
        metrics = await asyncio.to_thread(proc.metrics)
        assert f'scout_inflight{{role="{proc.role}"}}' in metrics
    selector = await asyncio.to_thread(stack.selector.metrics)
    assert 'scout_requests_total{op="ask",outcome="ok",role="selector"}' in selector
    assert 'scout_bytes_sent_total{mode="int8",role="selector"}' in selector
    assert 'scout_stage_seconds_count{role="selector",stage="prefill"}' in selector
    decoder = await asyncio.to_thread(stack.decoders()[0].metrics)
    assert 'scout_decode_queue_lag{role="cloud_decoder"}' in decoder


# --- the policy --------------------------------------------------------------------------------------------------
async def test_policy_follows_the_link_state(
    stack: ServiceStack, settings: Settings, client: NatsBus, ref_lm: Any, squad: list[Example]
) -> None:
    subjects, device = settings.subjects(), f"link-{uuid.uuid4().hex[:8]}"

    async def mode_at(rate_bps: float) -> Plan:
        state = LinkState(device_id=device, rate_bps=rate_bps, source="shaper", at=time.time())
        await client.publish(subjects.link(device), state.to_bytes())
        deadline = time.monotonic() + 10
        while True:
            req = PlanRequest(request_id=uuid.uuid4().hex, device_id=device, context_tokens=150, deadline_ms=2000)
            plan = await call(client, subjects.plan, req, Plan, timeout_s=10)
            if plan.bandwidth_bps == rate_bps or time.monotonic() > deadline:
                return plan
            await asyncio.sleep(0.05)

    slow, dead, fast = await mode_at(1e4), await mode_at(0.0), await mode_at(1e10)
    assert (slow.mode, slow.retention) == ("scout", 0.5)
    assert dead.mode == "local"
    assert fast.mode == "full" and fast.expected_bytes > 1_000_000

    # Unforced, end to end: the selector asks, the policy picks full at this rate, the answer is the library's.
    ex = squad[1]
    await mode_at(1e10)
    reply = await send(settings, stack, request(ex, mode=None, device=device))
    assert reply.mode == "full" and reply.plan is not None and not reply.plan.fallback
    ref = reference(ref_lm, ex, None, None, bandwidth_bps=1e10, deadline_s=60.0)
    assert (reply.mode, reply.answer, reply.bytes_sent) == (ref.mode, ref.answer, ref.bytes_sent)

    # A document already in the cloud store, by reference: the same answer.
    text_reply = await send(settings, stack, request(ex, mode="text"))
    by_ref = AskRequest(
        request_id=uuid.uuid4().hex,
        device_id="car-1",
        document_ref=hashlib.sha256(ex.context.encode()).hexdigest(),
        question=ex.question,
        deadline_ms=60_000,
        max_new_tokens=MAX_NEW,
        mode="text",
    )
    assert (await send(settings, stack, by_ref)).answer == text_reply.answer


# --- tracing ---------------------------------------------------------------------------------------------------
def _attr(span: Any, key: str) -> Any:
    for kv in span.attributes:
        if kv.key == key:
            return getattr(kv.value, kv.value.WhichOneof("value"))
    return None


def _trace_of(spans: list[Any], request_id: str) -> list[Any]:
    ids = {s.trace_id for s in spans if _attr(s, "scout.request_id") == request_id}
    assert len(ids) <= 1, f"request {request_id} is spread over {len(ids)} traces"
    return [s for s in spans if ids and s.trace_id in ids]


async def test_one_trace_per_request_with_all_four_services(
    stack: ServiceStack, settings: Settings, squad: list[Example]
) -> None:
    stack.ensure_decoders()
    kv = request(squad[0], mode="int8", retention=0.5, max_new=2)
    scout = request(squad[1], mode="scout", retention=0.5, max_new=2)
    await send(settings, stack, kv, "nats")
    await send(settings, stack, scout, "http")

    def complete(rid: str, roles: set[str]) -> bool:
        """All roles seen, the decoder's reply span and the root span (it ends last) arrived."""
        trace = _trace_of(stack.sink.snapshot(), rid)
        seen = {_attr(s, "scout.role") for s in trace}
        return seen >= roles and any(s.name == "reply" for s in trace) and any(not s.parent_span_id for s in trace)

    four = {"selector", "transport_policy", "quantizer", "cloud_decoder"}
    deadline = time.monotonic() + 30
    while not (complete(kv.request_id, four) and complete(scout.request_id, four - {"quantizer"})):
        assert time.monotonic() < deadline, "spans did not arrive"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # let stragglers of the same traces arrive

    spans = stack.sink.snapshot()
    kv_trace, scout_trace = _trace_of(spans, kv.request_id), _trace_of(spans, scout.request_id)
    assert kv_trace[0].trace_id != scout_trace[0].trace_id
    for trace, root_name in ((kv_trace, "ask handle"), (scout_trace, "ask http")):
        by_id = {s.span_id: s for s in trace}
        roots = [s for s in trace if not s.parent_span_id]
        assert [(r.name, _attr(r, "scout.role")) for r in roots] == [(root_name, "selector")]
        assert all(s.parent_span_id in by_id for s in trace if s.parent_span_id), "a span's parent is missing"

        def parent(span: Any, by_id: dict[bytes, Any] = by_id) -> Any:
            return by_id[span.parent_span_id]

        def one(name: str, role: str, trace: list[Any] = trace) -> Any:
            found = [s for s in trace if s.name == name and _attr(s, "scout.role") == role]
            assert len(found) == 1, (name, role, [(s.name, _attr(s, "scout.role")) for s in trace])
            return found[0]

        plan_server = one("plan handle", "transport_policy")
        assert (parent(plan_server).name, _attr(parent(plan_server), "scout.role")) == ("plan", "selector")
        decode = one("decode request", "cloud_decoder")
        for stage in ("fetch", "decode", "generate", "reply"):
            assert parent(one(stage, "cloud_decoder")).span_id == decode.span_id
        for stage in ("prefill", "score"):
            assert _attr(parent(one(stage, "selector")), "scout.role") == "selector"
    kv_by_id = {s.span_id: s for s in kv_trace}
    encode_server = next(s for s in kv_trace if s.name == "encode handle")
    assert kv_by_id[encode_server.parent_span_id].name == "encode request"
    decode = next(s for s in kv_trace if s.name == "decode request")
    assert (kv_by_id[decode.parent_span_id].name, _attr(kv_by_id[decode.parent_span_id], "scout.role")) == (
        "enqueue decode",
        "quantizer",
    )
    upload = next(s for s in kv_trace if s.name == "upload" and _attr(s, "scout.role") == "quantizer")
    assert _attr(upload, "scout.bytes") > 0
    scout_by_id = {s.span_id: s for s in scout_trace}
    decode = next(s for s in scout_trace if s.name == "decode request")
    assert _attr(scout_by_id[decode.parent_span_id], "scout.role") == "selector"


# --- two decoders -----------------------------------------------------------------------------------------------
async def test_two_decoders_share_a_batch_each_request_answered_once(
    stack: ServiceStack, settings: Settings, client: NatsBus, ref_lm: Any, squad: list[Example]
) -> None:
    decoders = stack.ensure_decoders()
    tap = await tap_results(client, settings)
    examples = [squad[ANSWERING[i % len(ANSWERING)]] for i in range(6)]
    reqs = [request(ex, mode="text", device=f"batch-{i}") for i, ex in enumerate(examples)]
    replies = await asyncio.gather(*(send(settings, stack, r, "http" if i % 2 else "nats") for i, r in enumerate(reqs)))
    await asyncio.sleep(1.0)  # a duplicate reply would arrive by now
    for i, (req, reply) in enumerate(zip(reqs, replies, strict=True)):
        assert reply.request_id == req.request_id and reply.mode == "text"
        assert reply.answer == reference(ref_lm, examples[i], "text", None).answer
        assert tap.count(req.request_id) == 1
    by_decoder = Counter(r.decoder_id for r in tap.results if r.request_id in {q.request_id for q in reqs})
    assert set(by_decoder) == {d.instance for d in decoders}, by_decoder


async def _working_decoder(stack: ServiceStack, timeout_s: float = 60.0) -> Proc:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in stack.decoders():
            if proc.alive and await asyncio.to_thread(proc.inflight) >= 1:
                return proc
        await asyncio.sleep(0.03)
    raise AssertionError("no decoder picked the request up")


async def test_kill_9_mid_decode_still_yields_exactly_one_answer(
    stack: ServiceStack, settings: Settings, client: NatsBus, ref_lm: Any, squad: list[Example]
) -> None:
    stack.ensure_decoders()
    tap = await tap_results(client, settings)
    ex = squad[0]
    req = request(ex, mode="text", max_new=24)
    pending = asyncio.create_task(send(settings, stack, req))
    victim = await _working_decoder(stack)
    victim.popen.send_signal(signal.SIGKILL)
    reply = await asyncio.wait_for(pending, 180)
    await asyncio.sleep(1.0)
    assert reply.deliveries >= 2, "the request was not redelivered"
    assert tap.count(req.request_id) == 1
    assert reply.answer == reference(ref_lm, ex, "text", None, max_new=24).answer
    assert victim.popen.wait(10) == -signal.SIGKILL


async def test_sigterm_lets_a_decoder_finish_its_request(
    stack: ServiceStack, settings: Settings, client: NatsBus, ref_lm: Any, squad: list[Example]
) -> None:
    stack.ensure_decoders()
    tap = await tap_results(client, settings)
    ex = squad[3]
    req = request(ex, mode="text", max_new=24)
    pending = asyncio.create_task(send(settings, stack, req))
    worker = await _working_decoder(stack)
    worker.popen.send_signal(signal.SIGTERM)
    reply = await asyncio.wait_for(pending, 180)
    assert reply.deliveries == 1, "the draining decoder did not finish the request itself"
    assert reply.answer == reference(ref_lm, ex, "text", None, max_new=24).answer
    assert await asyncio.to_thread(stack.stop, worker) == 0
    await asyncio.sleep(0.5)
    assert tap.count(req.request_id) == 1
