"""A client of the selector: send an `AskRequest` over NATS or HTTP (``POST /v1/ask``), get the `AskReply` or the
typed error. What ``scout ask`` uses; small enough to read as the protocol's reference client.

Over NATS, ``route`` says which selectors may take the ask: ``shared`` (the default) sends it to ``scout.v1.ask``,
served by selectors bound to no device; ``device`` sends it to ``scout.v1.ask.<device_id>``, served only by the
selector bound to the request's device (``SCOUT_SELECTOR_DEVICE_ID``, one per edge device pod). Over HTTP the URL
already names one selector, so ``route`` does not apply (a bound selector refuses another device's ask with 403).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Literal

from pydantic import ValidationError

from scout_runtime.bus import connect_bus
from scout_runtime.errors import BusClosed, ScoutError
from scout_runtime.messages import AskReply, AskRequest, parse_reply
from scout_runtime.rpc import call
from scout_runtime.settings import Settings

__all__ = ["ROUTES", "AskFailed", "Route", "ask", "ask_fields", "ask_subject", "new_request"]

Route = Literal["shared", "device"]
ROUTES: tuple[Route, ...] = ("shared", "device")


def ask_subject(settings: Settings, device_id: str, route: Route = "shared") -> str:
    """The subject an ask for ``device_id`` goes to over NATS (see the module docstring)."""
    if route == "shared":
        return settings.subjects().ask
    if route == "device":
        return settings.subjects().ask_device(device_id)
    raise ValueError(f"route must be one of {', '.join(ROUTES)}")


async def ask(
    request: AskRequest,
    *,
    settings: Settings | None = None,
    http_url: str | None = None,
    timeout_s: float = 120.0,
    route: Route = "shared",
) -> AskReply:
    """One ask. ``http_url`` (e.g. ``http://127.0.0.1:8080``) uses the selector's HTTP endpoint, otherwise NATS
    (``SCOUT_NATS_URL``, ``SCOUT_NAMESPACE``) on the subject ``route`` picks (`ask_subject`). An `ErrorReply` is
    raised as its `ScoutError`."""
    settings = settings or Settings()
    subject = ask_subject(settings, request.device_id, route)
    if http_url:
        import aiohttp

        url = http_url.rstrip("/") + "/v1/ask"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
                session.post(url, data=request.to_bytes(), headers={"Content-Type": "application/json"}) as resp,
            ):
                body = await resp.read()
        except aiohttp.ClientError as e:
            raise BusClosed(f"cannot reach the selector at {url}: {type(e).__name__}") from None
        return parse_reply(AskReply, body, limits=settings.limits())
    bus = await connect_bus(settings, name="scout-ask")
    try:
        return await call(bus, subject, request, AskReply, timeout_s=timeout_s, limits=settings.limits())
    finally:
        await bus.close()


def new_request(question: str, document: str, *, device_id: str, **options: Any) -> AskRequest:
    """An `AskRequest` with a fresh request id; ``options`` are its other fields (deadline, mode, retention …)."""
    return AskRequest(request_id=uuid.uuid4().hex, device_id=device_id, document=document, question=question, **options)


class AskFailed(Exception):
    """An ask that got no answer: an invalid request or a typed error reply (the message says which)."""


def ask_fields(
    *,
    question: str,
    document: str,
    mode: str | None = None,
    retention: float | None = None,
    deadline_ms: int = 5000,
    max_new_tokens: int = 32,
    device_id: str = "cli",
    http_url: str | None = None,
    timeout_s: float = 120.0,
    settings: Settings | None = None,
    route: Route = "shared",
) -> dict[str, Any]:
    """``scout ask``: build the request, send it, return the reply as plain fields (plus the plan's reason)."""
    try:
        request = new_request(
            question,
            document,
            device_id=device_id,
            deadline_ms=deadline_ms,
            max_new_tokens=max_new_tokens,
            mode=mode,
            retention=retention,
        )
    except ValidationError as e:
        first = e.errors(include_url=False, include_input=False)[0]
        raise AskFailed(f"invalid request: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if route not in ROUTES:
        raise AskFailed(f"invalid request: route must be one of {', '.join(ROUTES)}")
    try:
        reply = asyncio.run(ask(request, settings=settings, http_url=http_url, timeout_s=timeout_s, route=route))
    except ScoutError as e:
        raise AskFailed(f"{e.code.value}: {e.message}") from None
    fields = reply.model_dump(mode="json")
    fields["reason"] = reply.plan.reason if reply.plan is not None else ""
    return fields
