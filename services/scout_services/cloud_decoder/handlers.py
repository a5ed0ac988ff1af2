"""Cloud decoder entry point: one decode work item -> exactly one reply on its ``reply_to``, then the ack.

Delivery is at least once (JetStream), replies must be exactly once, so:

* the reply is sent *before* the ack: a decoder that dies in between leaves the item to be redelivered, never a
  request without an answer;
* the sent reply is kept in the cloud store under the request id (`result_cache_key`, with a TTL) right after it
  is sent; a redelivered item (``delivery_count > 1``) whose reply is there is acked without a second reply (the
  window in which a duplicate is still possible is the few milliseconds between publish and that store write);
  a *first* delivery that finds a reply there is a request id reused after its decode finished, and gets the
  kept reply (same id, same answer); the store is read again just before sending, so a delivery that lost its item
  to a redelivery while it worked (a frozen replica, heartbeats cut off by a NATS restart) and finishes after the
  other replica answered sends nothing (only replicas finishing within the same milliseconds can both send);
* failures are typed: bad input, a missing or corrupt blob, another model's blob are answered with an
  `ErrorReply` at once (retrying cannot help) and acked; an unexpected or retryable failure is nak'ed for another
  replica, unless this is the last delivery, when the decoder answers with the error itself (nobody else will);
* a long decode sends ``in_progress`` heartbeats, so ``ack_wait`` can be short (a dead decoder's work comes back
  quickly) without a slow but live decode being handed to a second replica.

What the decoder computes is `scout.pipeline.answer_from_blob` (KV modes) or `scout.pipeline.answer_from_document`
(scout, text), in a worker thread (`scout_services.compute.Compute`) so that heartbeats, health checks and
metrics keep running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanKind

from scout.pipeline import answer_from_blob, answer_from_document
from scout_runtime.bus import Bus, WorkItem
from scout_runtime.errors import (
    BadRequest,
    BlobCorrupt,
    BlobMissing,
    ErrorCode,
    InternalError,
    ScoutError,
    UnknownModel,
)
from scout_runtime.messages import KV_MODES, DecodeRequest, DecodeResult, ErrorReply, parse
from scout_runtime.store import BlobStore
from scout_runtime.telemetry import inject
from scout_services.cloud_decoder.args import DecoderArgs
from scout_services.common import Role, result_cache_key
from scout_services.compute import Compute

log = logging.getLogger("scout.decoder")


@dataclass(eq=False)
class DecoderHandlers:
    """Decodes work items with one model, one computation at a time (`Compute`)."""

    role: Role
    bus: Bus
    cloud: BlobStore
    lm: Any
    model_name: str
    args: DecoderArgs
    compute: Compute = field(init=False)
    heartbeat_s: float = field(init=False)
    _edge_tokenizers: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.compute = Compute(self.role)
        self.heartbeat_s = self.args.heartbeat_s or max(0.05, self.role.settings.ack_wait_s / 3)

    # --- the work item ---------------------------------------------------------------------------------------
    async def handle(self, item: WorkItem) -> None:
        role = self.role
        if item.redelivered:
            role.metrics.redeliveries.inc()
        with role.span("decode request", kind=SpanKind.CONSUMER, headers=item.headers, delivery=item.delivery_count):
            try:
                req = parse(DecodeRequest, item.data, limits=role.limits)
            except ScoutError as e:  # unreadable: nobody to answer but the errors subject
                await self._unanswerable(item, e, None)
                return
            role.mark_current(
                request_id=req.request_id, device_id=req.device_id, mode=req.mode, retention=req.retention
            )
            if not role.subjects.is_reply_subject(req.reply_to):
                err = BadRequest("reply_to must be an inbox or a result subject", request_id=req.request_id)
                await self._unanswerable(item, err, req.request_id)
                return
            key = result_cache_key(self.cloud.prefix, req.device_id, req.request_id)
            kept = await self._kept_reply(key)
            if kept is not None:
                if not item.redelivered:  # a reused request id: answer it as before
                    await self._send(req, kept, key, remember=False)
                role.metrics.count("decode", "duplicate")
                await item.ack()
                return
            out = await self._answer_or_error(req, item)
            if out is None:
                return  # nak'ed for another replica
            if await self._kept_reply(key) is not None:
                # While this delivery worked, the item was redelivered (its heartbeats stopped reaching the server:
                # a frozen process, a NATS restart) and another replica has answered it: send no second reply.
                role.metrics.count("decode", "duplicate")
                await item.ack()
                return
            await self._send(req, out, key, remember=True)
            await item.ack()

    async def _answer_or_error(self, req: DecodeRequest, item: WorkItem) -> bytes | None:
        role = self.role
        role.metrics.inflight.inc()
        try:
            async with item.keep_alive(self.heartbeat_s):
                result = await self.decode(req, item.delivery_count)
        except ScoutError as e:
            if e.retryable and not item.is_last_delivery:
                role.metrics.error("decode", e.code.value)
                await item.nak(role.settings.nak_delay_s)
                return None
            role.metrics.error("decode", e.code.value)
            return ErrorReply.from_error(e, req.request_id).to_bytes()
        except Exception:
            log.exception(
                "decode of %s failed (delivery %d of %d)", req.request_id, item.delivery_count, item.max_deliver
            )
            role.metrics.error("decode", ErrorCode.INTERNAL.value)
            if not item.is_last_delivery:
                await item.nak(role.settings.nak_delay_s)
                return None
            return ErrorReply(code=ErrorCode.INTERNAL, message="internal error", request_id=req.request_id).to_bytes()
        finally:
            role.metrics.inflight.dec()
        role.metrics.count("decode")
        role.metrics.observe_timings(result.timings)
        return result.to_bytes()

    async def _send(self, req: DecodeRequest, out: bytes, key: str, *, remember: bool) -> None:
        with self.role.span("reply", kind=SpanKind.PRODUCER, request_id=req.request_id, nbytes=len(out)):
            await self.bus.publish(req.reply_to, out, headers=inject())
        if remember:
            try:
                await self.cloud.put(key, out, ttl_s=self.args.result_ttl_s)
            except ScoutError as e:  # the reply went out; only duplicate suppression is weakened
                log.warning("could not keep the reply of %s: %s", req.request_id, e)

    async def _kept_reply(self, key: str) -> bytes | None:
        try:
            return await self.cloud.get(key, max_bytes=self.role.limits.max_message_bytes)
        except BlobMissing:
            return None
        except ScoutError as e:  # unreadable cache: decode again rather than fail the request
            log.warning("result cache %s unreadable: %s", key, e)
            return None

    async def _unanswerable(self, item: WorkItem, error: ScoutError, request_id: str | None) -> None:
        """A work item that cannot be answered on its reply subject: report it on ``errors`` and drop it."""
        self.role.metrics.error("decode", error.code.value)
        try:
            await self.bus.publish(self.role.subjects.errors, ErrorReply.from_error(error, request_id).to_bytes())
        except ScoutError as e:
            log.warning("could not report an unanswerable work item: %s", e)
        await item.term()

    # --- the computation -------------------------------------------------------------------------------------
    async def decode(self, req: DecodeRequest, deliveries: int = 1) -> DecodeResult:
        """Fetch, verify and answer one request (raises `ScoutError` for every expected failure)."""
        role, rid, limits = self.role, req.request_id, self.role.limits
        spec = self.lm.spec
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if req.mode in KV_MODES:
            if req.model_fingerprint != spec.fingerprint:
                raise UnknownModel(
                    f"this decoder serves {self.model_name} ({spec.fingerprint}), not the KV of "
                    f"{req.model} ({req.model_fingerprint})",
                    request_id=rid,
                )
            with role.span("fetch", request_id=rid, nbytes=req.blob_bytes):
                assert req.blob_key is not None
                blob = await self.cloud.get_blob(req.blob_key, device_id=req.device_id, max_bytes=limits.max_blob_bytes)
            if len(blob) != req.blob_bytes:
                raise BlobCorrupt(f"blob holds {len(blob)} bytes, the request says {req.blob_bytes}", request_id=rid)
            timings["fetch"] = time.perf_counter() - t0
            answer = await self.compute.run(
                rid,
                answer_from_blob,
                self.lm,
                blob,
                suffix_ids=req.suffix_token_ids,
                max_new_tokens=req.max_new_tokens,
                max_bytes=limits.max_blob_bytes,
            )
        else:
            edge_tokenizer = await self._edge_tokenizer(req) if req.mode == "scout" else None
            assert req.document_ref is not None
            with role.span("fetch", request_id=rid):
                document = await self.cloud.get_document(req.document_ref)
            timings["fetch"] = time.perf_counter() - t0
            answer = await self.compute.run(
                rid,
                answer_from_document,
                self.lm,
                question=req.question,
                document=document,
                task=req.task,
                positions=req.positions_bytes(),
                context_tokens=req.context_tokens,
                edge_tokenizer=edge_tokenizer,
                max_new_tokens=req.max_new_tokens,
                max_context_tokens=limits.max_context_tokens,
            )
        timings.update(answer.timings)
        return DecodeResult(
            request_id=rid,
            device_id=req.device_id,
            answer=answer.answer[: limits.max_answer_chars],
            mode=req.mode,
            model=self.model_name,
            generated_tokens=len(answer.token_ids),
            timings=timings,
            decoder_id=role.settings.instance_id,
            deliveries=deliveries,
        )

    async def _edge_tokenizer(self, req: DecodeRequest) -> Any:
        """None when the edge's positions index this model's tokens; the edge tokenizer to align with otherwise."""
        spec = self.lm.spec
        if req.model_fingerprint == spec.fingerprint:
            return None
        if req.model not in self.args.edge_models:
            raise UnknownModel(f"position sets of {req.model} are not accepted here", request_id=req.request_id)
        if req.model not in self._edge_tokenizers:
            self._edge_tokenizers[req.model] = await asyncio.to_thread(_load_edge_tokenizer, req.model, spec)
        fingerprint, tokenizer = self._edge_tokenizers[req.model]
        if fingerprint != req.model_fingerprint:
            raise UnknownModel(
                f"{req.model} is not the model with fingerprint {req.model_fingerprint}", request_id=req.request_id
            )
        return tokenizer


def _load_edge_tokenizer(name: str, cloud_spec: Any) -> tuple[str, Any]:
    """(the edge model's fingerprint, its tokenizer or None when it tokenizes like the cloud model)."""
    from scout.models import load_spec, load_tokenizer
    from scout.pipeline import same_tokenizer

    try:
        edge_spec = load_spec(name)
    except Exception as e:  # an allow-listed model that is not installed here is a deployment error
        raise InternalError(f"edge model {name} is allowed but cannot be loaded: {type(e).__name__}") from None
    return edge_spec.fingerprint, None if same_tokenizer(edge_spec, cloud_spec) else load_tokenizer(name)
