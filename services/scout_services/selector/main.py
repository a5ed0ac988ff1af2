"""Selector wiring: ``scout.v1.ask`` over NATS (request/reply, queue group) and ``POST /v1/ask`` over HTTP (JSON in
and out, for clients without a NATS client), both through one handler, one per-device in-flight limit and one
set of metrics; this instance's result subject; the edge store (raw KV) and the cloud store (documents).

HTTP errors carry the same `ErrorReply` JSON as the bus, with a status that says what kind of failure it is
(`HTTP_STATUS`).

Device binding (``SCOUT_SELECTOR_DEVICE_ID``, one selector per edge device pod): the selector serves only
``<root>.ask.<device_id>`` (`Subjects.ask_device`), never the shared ``<root>.ask``, and answers an ask for another
device, on either transport, with ``forbidden`` (403). Unbound (the default), it joins the shared subject's queue
group and serves any device, as an embedded or dev deployment wants.

/readyz answers 503 until `start` has finished (model loaded, subscriptions made, HTTP API listening).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any, Unpack

from aiohttp import web
from opentelemetry.trace import SpanKind

from scout_runtime.bus import Msg, Subscription, WorkQueueSpec
from scout_runtime.errors import ErrorCode, ScoutError, TooLarge
from scout_runtime.limits import InflightLimiter
from scout_runtime.messages import AskReply, AskRequest, ErrorReply, parse
from scout_runtime.settings import Settings
from scout_runtime.store import BlobStore
from scout_services.common import RoleService, ServiceOptions, configure_logging, run_service
from scout_services.compute import load_role_model
from scout_services.selector.args import SelectorArgs
from scout_services.selector.handlers import ResultWaiter, SelectorHandlers

log = logging.getLogger("scout.selector")
QUEUE_GROUP = "scout-selectors"
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.UNKNOWN_MODEL: 422,
    ErrorCode.BLOB_MISSING: 404,
    ErrorCode.BLOB_CORRUPT: 502,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.INTERNAL: 500,
}


class SelectorService(RoleService):
    """The selector role (see the module docstring)."""

    def __init__(
        self,
        settings: Settings | None = None,
        args: SelectorArgs | None = None,
        *,
        model: Any = None,
        http_port: int | None = None,
        **options: Unpack[ServiceOptions],
    ) -> None:
        super().__init__("selector", settings, **options)
        self.args = args or SelectorArgs()
        self.model = model
        self.http_port = http_port
        self.edge: BlobStore | None = None
        self.cloud: BlobStore | None = None
        self.handlers: SelectorHandlers | None = None
        self.waiter = ResultWaiter()
        self.inflight = InflightLimiter(self.role.settings.max_inflight_per_device)
        self._ask_sub: Subscription | None = None
        self._result_sub: Subscription | None = None
        self._api: Any = None
        self._api_port = 0

    def ports(self) -> dict[str, int]:
        ports = super().ports()
        if self._api is not None:
            ports["http"] = self._api_port
        return ports

    async def start(self) -> None:
        role, settings = self.role, self.role.settings
        await self._serve_health()
        if self.model is None:
            self.model = await asyncio.to_thread(load_role_model, self.args)
        self.edge = self._open_store("edge")
        self.cloud = self._open_store("cloud")
        bus = await self._connect("selector")
        await bus.ensure_work_queue(WorkQueueSpec.for_decode(settings))
        token = re.sub(r"[^A-Za-z0-9_-]", "-", f"sel-{settings.instance_id}")[:64]
        reply_subject = role.subjects.result(token)
        self._result_sub = await bus.subscribe(reply_subject, self.waiter.on_message, concurrency=64)
        self.handlers = SelectorHandlers(
            role, bus, self.edge, self.cloud, self.model, self.args, self.waiter, reply_subject
        )
        self._ask_sub = await self._serve(
            self.ask_subject,
            AskRequest,
            self._ask_nats,
            queue=QUEUE_GROUP,
            concurrency=self.args.concurrency,
            inflight=self.inflight,
            op="ask",
        )
        api = web.Application(client_max_size=role.limits.max_message_bytes)
        api.router.add_post("/v1/ask", self._ask_http)
        runner = web.AppRunner(api, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port if self.http_port is None else self.http_port)
        await site.start()
        self._api = runner
        self._api_port = int(runner.addresses[0][1])
        bound = self.args.device_id
        log.info("serving asks on %s (%s)", self.ask_subject, "any device" if bound is None else f"{bound} only")
        role.mark_started()

    @property
    def ask_subject(self) -> str:
        """Where this selector takes asks: its device's subject when bound to one, else the shared one."""
        subjects = self.role.subjects
        return subjects.ask if self.args.device_id is None else subjects.ask_device(self.args.device_id)

    async def _ask_nats(self, req: AskRequest, msg: Msg) -> AskReply:
        assert self.handlers is not None
        return await self.handlers.ask(req)

    async def _ask_http(self, request: web.Request) -> web.Response:
        """``POST /v1/ask``: the same flow as the bus, with the trace context from the HTTP headers."""
        role = self.role
        request_id: str | None = None
        try:
            with role.span("ask http", kind=SpanKind.SERVER, headers=dict(request.headers)):
                try:
                    body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    raise TooLarge(f"request body exceeds {role.limits.max_message_bytes} bytes") from None
                try:
                    req = parse(AskRequest, body, limits=role.limits)
                except ScoutError as e:
                    role.metrics.error("ask", e.code.value)
                    raise
                request_id = req.request_id
                assert self.handlers is not None
                with role.metrics.track("ask"), self.inflight.acquire(req.device_id):
                    reply = await self.handlers.ask(req)
            return web.Response(body=reply.to_bytes(), content_type="application/json")
        except ScoutError as e:
            error = ErrorReply.from_error(e, request_id)
            return web.Response(body=error.to_bytes(), status=HTTP_STATUS[error.code], content_type="application/json")
        except Exception:
            log.exception("internal error serving POST /v1/ask")
            error = ErrorReply(code=ErrorCode.INTERNAL, message="internal error", request_id=request_id)
            return web.Response(body=error.to_bytes(), status=500, content_type="application/json")

    async def stop(self) -> None:
        """Graceful: stop taking asks, let those in flight get their results, then disconnect."""
        self.role.health.draining = True
        if self._ask_sub is not None:
            await self._ask_sub.stop(drain_timeout_s=max(60.0, self.role.settings.request_timeout_s))
        if self._api is not None:
            await self._api.cleanup()
        if self._result_sub is not None:
            with contextlib.suppress(ScoutError):
                await self._result_sub.stop(drain_timeout_s=5)
        await self._close(self.edge, self.cloud)


def main() -> None:
    """``scout serve selector``."""
    configure_logging()
    asyncio.run(run_service(SelectorService(set_global=True)))
