"""Quantizer entry point: raw KV (edge store) -> `scout.pipeline.encode_uplink` -> cloud store -> decode queue.

The upload to the cloud store *is* the uplink transfer (in a pod it leaves through the shaped interface), so it is
timed alone, its bytes counted, and its goodput published as the device's `LinkState` (``source="goodput"``),
which is how the transport policy learns what the link really delivers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from opentelemetry.trace import SpanKind

from scout.pipeline import encode_uplink
from scout.policy.estimators import goodput_bps
from scout_runtime.bus import Bus
from scout_runtime.errors import BlobCorrupt, ScoutError
from scout_runtime.messages import EncodeReply, EncodeRequest, LinkState
from scout_runtime.store import BlobStore
from scout_services.common import Role, enqueue_decode
from scout_services.compute import Compute
from scout_services.quantizer.args import QuantizerArgs

FORWARDED = frozenset(
    {
        "request_id",
        "reply_to",
        "device_id",
        "model",
        "model_fingerprint",
        "mode",
        "retention",
        "bit_plan",
        "context_tokens",
        "suffix_token_ids",
        "question",
        "task",
        "max_new_tokens",
    }
)
"""The encode request's fields the decode request carries on unchanged (the blob fields are the upload's; the
positions and the context start are already applied to the blob)."""


@dataclass(eq=False)
class QuantizerHandlers:
    """Encodes per plan, uploads, enqueues; one CPU-bound encode at a time (`Compute`)."""

    role: Role
    bus: Bus
    edge: BlobStore
    cloud: BlobStore
    args: QuantizerArgs
    compute: Compute = field(init=False)

    def __post_init__(self) -> None:
        self.compute = Compute(self.role, spans=False)  # the encode span is made here, around the call

    async def encode(self, req: EncodeRequest) -> EncodeReply:
        role, rid = self.role, req.request_id
        limits = role.limits
        timings: dict[str, float] = {}
        attrs = {"request_id": rid, "device_id": req.device_id, "mode": req.mode, "retention": req.retention}
        role.mark_current(**attrs, bit_plan=req.bit_plan)

        t0 = time.perf_counter()
        with role.span("fetch raw kv", **attrs):
            raw = await self.edge.get_blob(req.raw_blob_key, device_id=req.device_id, max_bytes=limits.max_blob_bytes)
        if len(raw) != req.raw_blob_bytes:
            raise BlobCorrupt(f"raw KV holds {len(raw)} bytes, the request says {req.raw_blob_bytes}", request_id=rid)
        timings["fetch"] = time.perf_counter() - t0

        with role.span("encode", **attrs, bit_plan=req.bit_plan) as span:
            up = await self.compute.run(
                rid,
                encode_uplink,
                raw,
                model_fingerprint=req.model_fingerprint,
                bit_plan=req.bit_plan,
                positions=req.positions_bytes(),
                context_start=req.context_start,
                context_tokens=req.context_tokens,
                max_bytes=limits.max_blob_bytes,
                max_context_tokens=limits.max_context_tokens,
            )
            span.set_attribute("scout.bytes", len(up.data))
            span.set_attribute("scout.kept_tokens", up.kept_tokens)
        timings["encode"] = up.seconds
        del raw

        t1 = time.perf_counter()
        with role.span("upload", **attrs, nbytes=len(up.data)) as span:
            ref = await self.cloud.put_blob(req.device_id, up.data, ttl_s=self.args.blob_ttl_s)
            upload_s = time.perf_counter() - t1
            if upload_s > 0:
                span.set_attribute("scout.link.rate_bps", goodput_bps(ref.size, upload_s))
        timings["upload"] = upload_s
        role.metrics.sent(req.mode, ref.size)
        goodput: float | None = None
        if ref.size >= self.args.min_goodput_bytes and upload_s > 0:
            goodput = goodput_bps(ref.size, upload_s)
            state = LinkState(device_id=req.device_id, rate_bps=min(goodput, 1e13), source="goodput", at=time.time())
            try:
                await self.bus.publish(role.subjects.link(req.device_id), state.to_bytes())
            except ScoutError as e:  # the link report is advisory; the request goes on
                role.metrics.error("link_report", e.code.value)

        t2 = time.perf_counter()
        with role.span("enqueue decode", kind=SpanKind.PRODUCER, **attrs, nbytes=ref.size):
            result = await enqueue_decode(
                role,
                self.bus,
                **req.model_dump(include=FORWARDED),
                blob_key=ref.key,
                blob_bytes=ref.size,
                blob_sha256=ref.sha256,
            )
        timings["enqueue"] = time.perf_counter() - t2
        role.metrics.observe_timings(timings)
        return EncodeReply(
            request_id=rid,
            device_id=req.device_id,
            blob_key=ref.key,
            blob_bytes=ref.size,
            blob_sha256=ref.sha256,
            kept_tokens=up.kept_tokens,
            timings=timings,
            goodput_bps=goodput,
            sequence=result.sequence,
        )
