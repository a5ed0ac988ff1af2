"""A client of the selector: send an `AskRequest` over NATS (``scout.v1.ask``) or HTTP (``POST /v1/ask``), get the
`AskReply` or the typed error. What ``scout ask`` uses; small enough to read as the protocol's reference client."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from pydantic import ValidationError

from scout_runtime.bus import connect_bus
from scout_runtime.errors import BusClosed, ScoutError
from scout_runtime.messages import AskReply, AskRequest, parse_reply
from scout_runtime.rpc import call
from scout_runtime.settings import Settings

__all__ = ["AskFailed", "ask", "ask_fields"]


async def ask(
    request: AskRequest, *, settings: Settings | None = None, http_url: str | None = None, timeout_s: float = 120.0
) -> AskReply:
    """One ask. ``http_url`` (e.g. ``http://127.0.0.1:8080``) uses the selector's HTTP endpoint, otherwise NATS
    (``SCOUT_NATS_URL``, ``SCOUT_NAMESPACE``). An `ErrorReply` is raised as its `ScoutError`."""
    settings = settings or Settings()
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
        return await call(
            bus, settings.subjects().ask, request, AskReply, timeout_s=timeout_s, limits=settings.limits()
        )
    finally:
        await bus.close()


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
) -> dict[str, Any]:
    """``scout ask``: build the request, send it, return the reply as plain fields (plus the plan's reason)."""
    try:
        request = AskRequest(
            request_id=uuid.uuid4().hex,
            device_id=device_id,
            document=document,
            question=question,
            deadline_ms=deadline_ms,
            max_new_tokens=max_new_tokens,
            mode=mode,
            retention=retention,
        )
    except ValidationError as e:
        first = e.errors(include_url=False, include_input=False)[0]
        raise AskFailed(f"invalid request: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    try:
        reply = asyncio.run(ask(request, settings=settings, http_url=http_url, timeout_s=timeout_s))
    except ScoutError as e:
        raise AskFailed(f"{e.code.value}: {e.message}") from None
    fields = reply.model_dump(mode="json")
    fields["reason"] = reply.plan.reason if reply.plan is not None else ""
    return fields
