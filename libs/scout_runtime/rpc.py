"""Request/reply plumbing every service shares: parse, limit, trace, handle, answer (or a typed error), count.

Why here and not in each service: the hostile-input contract of issue 10 (random bytes, wrong versions, oversized
fields on every subject are answered with a typed `ErrorReply`, and the service keeps serving) must hold for every
subject, so it is written once. A handler only ever sees a validated request and returns a reply model; it raises
`ScoutError` for expected failures. Anything else is a bug: it is logged with its traceback and answered as
``internal`` with no detail (internals never leak to a client).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import pydantic_core
from opentelemetry.trace import SpanKind, Tracer

from scout_runtime.bus import Bus, Msg, Subscription
from scout_runtime.errors import ErrorCode, PayloadTooLarge, ScoutError
from scout_runtime.limits import DEFAULT_LIMITS, InflightLimiter, Limits
from scout_runtime.messages import ErrorReply, Message, parse, parse_reply
from scout_runtime.metrics import ServiceMetrics
from scout_runtime.subjects import validate_token
from scout_runtime.telemetry import inject, start_span

__all__ = ["call", "serve"]

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)


def _salvage_request_id(data: bytes) -> str | None:
    """The request id of an invalid request, if one can be read safely (so the client can correlate the error)."""
    try:
        obj = pydantic_core.from_json(data, allow_inf_nan=False)
    except ValueError:
        return None
    rid = obj.get("request_id") if isinstance(obj, dict) else None
    try:
        return validate_token(rid, "request_id") if isinstance(rid, str) else None
    except ValueError:
        return None


async def serve(
    bus: Bus,
    subject: str,
    request_cls: type[Req],
    handler: Callable[[Req, Msg], Awaitable[Message]],
    *,
    queue: str | None = None,
    concurrency: int = 1,
    limits: Limits | None = None,
    tracer: Tracer | None = None,
    metrics: ServiceMetrics | None = None,
    inflight: InflightLimiter | None = None,
    op: str | None = None,
) -> Subscription:
    """Serve ``request_cls`` requests on ``subject``: every request gets exactly one reply, the handler's or an
    `ErrorReply`. With ``inflight``, a device over its in-flight limit is answered ``overloaded`` at once."""
    limits = limits or DEFAULT_LIMITS
    name = op or request_cls.type_name()

    async def on_msg(msg: Msg) -> None:
        request_id: str | None = None
        out: bytes
        span_cm = (
            start_span(tracer, f"{name} handle", headers=msg.headers, kind=SpanKind.SERVER)
            if tracer is not None
            else contextlib.nullcontext()
        )
        track = metrics.track(name) if metrics is not None else contextlib.nullcontext()
        try:
            with span_cm as span, track:
                request = parse(request_cls, msg.data, limits=limits)
                request_id = getattr(request, "request_id", None)
                if span is not None and request_id:
                    span.set_attribute("scout.request_id", request_id)
                device_id = getattr(request, "device_id", None)
                gate = inflight.acquire(device_id) if inflight is not None and device_id else contextlib.nullcontext()
                with gate:
                    reply = await handler(request, msg)
            out = reply.to_bytes()
        except ScoutError as e:
            if request_id is None and len(msg.data) <= limits.max_message_bytes:
                request_id = _salvage_request_id(msg.data)
            out = ErrorReply.from_error(e, request_id).to_bytes()
        except Exception:
            log.exception("internal error serving %s", subject)
            out = ErrorReply(code=ErrorCode.INTERNAL, message="internal error", request_id=request_id).to_bytes()
        if not msg.reply:
            return
        try:
            await msg.respond(out)
        except PayloadTooLarge as e:
            await msg.respond(ErrorReply.from_error(e, request_id).to_bytes())
        except ScoutError as e:
            log.warning("could not reply on %s: %s", subject, e)

    return await bus.subscribe(subject, on_msg, queue=queue, concurrency=concurrency)


async def call(
    bus: Bus,
    subject: str,
    request: Message,
    reply_cls: type[Rep],
    *,
    timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> Rep:
    """Send ``request`` (with the current trace context) and return the parsed reply; an `ErrorReply` is raised as
    its `ScoutError` (e.g. `BlobMissing`), a missing server as `NoResponders`, no answer as `Timeout`."""
    msg = await bus.request(subject, request.to_bytes(), inject(dict(headers or {})), timeout_s)
    return parse_reply(reply_cls, msg.data, limits=limits)
