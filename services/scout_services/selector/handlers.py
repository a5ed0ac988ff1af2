"""Selector entry point: one `AskRequest` -> one `AskReply`, driving the request through the other roles.

Edge computations are `scout.pipeline` functions (`edge_prefill`, `raw_kv_blob`, `answer_local`) run in a worker
thread, one at a time (`scout_services.compute.Compute`); everything else here is I/O: the plan
(``scout.v1.plan``), the raw KV into the edge store and the encode request to the quantizer (KV modes), the
document into the cloud store and the decode request onto the work queue (scout, text), and the wait for the
decoder's result on this instance's result subject.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanKind

from scout.pipeline import KV_MODES, answer_local, edge_prefill, raw_kv_blob, uplink_payload_bytes
from scout_runtime.bus import Bus, Msg
from scout_runtime.errors import BadRequest, Forbidden, ScoutError, Timeout
from scout_runtime.messages import (
    AskReply,
    AskRequest,
    DecodeRequest,
    DecodeResult,
    EncodeReply,
    EncodeRequest,
    Plan,
    PlanRequest,
    parse_reply,
)
from scout_runtime.rpc import call
from scout_runtime.store import BlobStore
from scout_services.common import Role, enqueue_decode
from scout_services.compute import Compute
from scout_services.selector.args import SelectorArgs

log = logging.getLogger("scout.selector")


class ResultWaiter:
    """Decode results for this selector arrive on one subject; each request waits on a future keyed by its id.

    A request id already in flight here is refused (its result could not be told apart); a result nobody waits
    for (late, or a duplicate) is dropped.
    """

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[DecodeResult]] = {}

    def expect(self, request_id: str) -> asyncio.Future[DecodeResult]:
        if request_id in self._pending:
            raise BadRequest("a request with this request_id is already in flight", request_id=request_id)
        fut: asyncio.Future[DecodeResult] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        return fut

    def forget(self, request_id: str) -> None:
        fut = self._pending.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    def __len__(self) -> int:
        return len(self._pending)

    async def on_message(self, msg: Msg) -> None:
        try:
            result = parse_reply(DecodeResult, msg.data)
        except ScoutError as e:
            fut = self._pending.get(e.request_id or "")
            if fut is None:
                log.warning("dropped an error on %s for no waiting request: %s", msg.subject, e)
            elif not fut.done():
                fut.set_exception(e)
            return
        fut = self._pending.get(result.request_id)
        if fut is not None and not fut.done():
            fut.set_result(result)


@dataclass(eq=False)
class SelectorHandlers:
    """The ask flow (see the module docstring)."""

    role: Role
    bus: Bus
    edge: BlobStore
    cloud: BlobStore
    lm: Any
    args: SelectorArgs
    waiter: ResultWaiter
    reply_subject: str
    """This instance's result subject: the decoder replies there, `waiter` hands each result to its ask."""
    compute: Compute = field(init=False)

    def __post_init__(self) -> None:
        self.compute = Compute(self.role)

    def check_device(self, req: AskRequest) -> None:
        """A selector bound to a device (``SCOUT_SELECTOR_DEVICE_ID``) serves that device's asks only: another
        device's would be staged under the wrong link and refused by that device's store user anyway."""
        own = self.args.device_id
        if own is not None and req.device_id != own:
            # Neither id is echoed: the caller learns that this selector is not its device's, not whose it is.
            raise Forbidden(
                "this selector serves one device only, and the request's device_id is not it",
                request_id=req.request_id,
            )

    async def ask(self, req: AskRequest) -> AskReply:
        role, rid = self.role, req.request_id
        role.mark_current(request_id=rid, device_id=req.device_id, model=self.args.model)
        self.check_device(req)
        t_start = time.perf_counter()
        fut = self.waiter.expect(rid)
        try:
            return await self._ask(req, fut, t_start)
        finally:
            self.waiter.forget(rid)

    async def _ask(self, req: AskRequest, fut: asyncio.Future[DecodeResult], t_start: float) -> AskReply:
        role, rid = self.role, req.request_id
        timings: dict[str, float] = {}
        if req.document is not None:
            document = req.document
        else:
            assert req.document_ref is not None
            with role.span("fetch document", request_id=rid):
                document = await self.cloud.get_document(req.document_ref)

        selector = req.selector or self.args.selector
        edge = await self.compute.run(
            rid, edge_prefill, self.lm, question=req.question, document=document, task=req.task, selector=selector
        )
        timings.update(edge.timings)

        t0 = time.perf_counter()
        with role.span("plan", kind=SpanKind.CLIENT, request_id=rid):
            plan = await call(
                self.bus,
                role.subjects.plan,
                PlanRequest(
                    request_id=rid,
                    device_id=req.device_id,
                    model_pair=self.args.model_pair,
                    context_tokens=edge.context_tokens,
                    prompt_tokens=edge.prompt_tokens,
                    deadline_ms=req.deadline_ms,
                    elapsed_ms=(t0 - t_start) * 1000.0,
                    mode=req.mode,
                    retention=req.retention,
                ),
                Plan,
                timeout_s=self.args.plan_timeout_s,
                limits=role.limits,
            )
        timings["plan"] = time.perf_counter() - t0
        role.mark_current(
            mode=plan.mode, retention=plan.retention, bit_plan=plan.bit_plan, link_rate_bps=plan.bandwidth_bps
        )

        result: DecodeResult | None = None
        if plan.mode == "local":
            answer = await self.compute.run(rid, answer_local, self.lm, edge, max_new_tokens=req.max_new_tokens)
            timings.update(answer.timings)
            text, sent, by = answer.answer, 0, "edge"
        else:
            if plan.mode in KV_MODES:
                sent = await self._hand_off_kv(req, edge, plan, timings)
            else:
                sent = await self._hand_off_document(req, edge, plan, document, timings)
            result = await self._await_result(req, fut, timings)
            text, by = result.answer, "cloud"
        timings["total"] = time.perf_counter() - t_start
        role.metrics.sent(plan.mode, sent)
        role.metrics.observe_timings(timings)
        role.mark_current(nbytes=sent)
        return AskReply(
            request_id=rid,
            device_id=req.device_id,
            answer=text,
            mode=plan.mode,
            retention=plan.retention,
            bytes_sent=sent,
            timings=timings,
            plan=plan,
            answered_by=by,
            edge_model=self.args.model,
            cloud_model=result.model if result is not None else "",
            deliveries=result.deliveries if result is not None else 1,
        )

    def _hand_off_fields(self, req: AskRequest, edge: Any, plan: Plan) -> dict[str, Any]:
        """What the encode request (KV modes) and the decode request (scout, text) both carry from the ask."""
        return {
            "request_id": req.request_id,
            "reply_to": self.reply_subject,
            "device_id": req.device_id,
            "model": self.args.model,
            "model_fingerprint": self.lm.spec.fingerprint,
            "mode": plan.mode,
            "bit_plan": plan.bit_plan,
            "context_tokens": edge.context_tokens,
            "question": req.question,
            "task": req.task,
            "max_new_tokens": req.max_new_tokens,
        }

    async def _hand_off_kv(self, req: AskRequest, edge: Any, plan: Plan, timings: dict[str, float]) -> int:
        """Stage the raw KV on the edge, have the quantizer encode, upload and enqueue it."""
        role, rid, spec = self.role, req.request_id, self.lm.spec
        t0 = time.perf_counter()
        with role.span("stage raw kv", request_id=rid) as span:
            raw = await asyncio.to_thread(raw_kv_blob, edge, spec.fingerprint)
            ref = await self.edge.put_blob(req.device_id, raw, ttl_s=self.args.raw_ttl_s)
            span.set_attribute("scout.bytes", ref.size)
        del raw
        timings["stage"] = time.perf_counter() - t0
        positions = edge.position_set(plan.retention) if plan.retention < 1.0 else None
        encode = EncodeRequest(
            **self._hand_off_fields(req, edge, plan),
            retention=plan.retention,
            raw_blob_key=ref.key,
            raw_blob_bytes=ref.size,
            raw_blob_sha256=ref.sha256,
            positions=None if positions is None else DecodeRequest.encode_positions(positions),
            context_start=edge.context_start,
            prompt_tokens=edge.prompt_tokens,
            suffix_token_ids=edge.suffix_ids(),
        )
        with role.span("encode request", kind=SpanKind.CLIENT, request_id=rid, mode=plan.mode):
            reply = await call(
                self.bus,
                role.subjects.encode,
                encode,
                EncodeReply,
                timeout_s=self.args.encode_timeout_s,
                limits=role.limits,
            )
        for stage in ("encode", "upload", "enqueue"):
            if stage in reply.timings:
                timings[stage] = reply.timings[stage]
        if "fetch" in reply.timings:
            timings["raw_fetch"] = reply.timings["fetch"]
        return uplink_payload_bytes(plan.mode, blob_bytes=reply.blob_bytes)

    async def _hand_off_document(
        self, req: AskRequest, edge: Any, plan: Plan, document: str, timings: dict[str, float]
    ) -> int:
        """Make sure the cloud holds the document; enqueue the decode with the position set (scout) or none."""
        role, rid = self.role, req.request_id
        t0 = time.perf_counter()
        with role.span("upload document", request_id=rid):
            document_ref = await self.cloud.put_document(document)
        timings["upload"] = time.perf_counter() - t0
        positions = edge.position_set(plan.retention) if plan.mode == "scout" else None
        t1 = time.perf_counter()
        with role.span("enqueue decode", kind=SpanKind.PRODUCER, request_id=rid, mode=plan.mode):
            await enqueue_decode(
                role,
                self.bus,
                **self._hand_off_fields(req, edge, plan),
                retention=plan.retention if plan.mode == "scout" else 1.0,
                positions=None if positions is None else DecodeRequest.encode_positions(positions),
                document_ref=document_ref,
            )
        timings["enqueue"] = time.perf_counter() - t1
        return uplink_payload_bytes(plan.mode, positions=positions, question=req.question)

    async def _await_result(
        self, req: AskRequest, fut: asyncio.Future[DecodeResult], timings: dict[str, float]
    ) -> DecodeResult:
        timeout = max(req.deadline_ms / 1000.0, self.role.settings.request_timeout_s)
        t0 = time.perf_counter()
        with self.role.span("await result", request_id=req.request_id):
            try:
                result = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except TimeoutError:
                raise Timeout(f"no decode result within {timeout:.1f} s", request_id=req.request_id) from None
        waited = time.perf_counter() - t0
        for stage in ("fetch", "decode", "generate"):
            if stage in result.timings:
                timings[stage] = result.timings[stage]
        timings["queue"] = max(0.0, waited - sum(result.timings.values()))
        return result
