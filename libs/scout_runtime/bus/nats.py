"""`NatsBus`: the bus over nats-py, core NATS for control and a JetStream work queue for decode requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from scout_runtime.bus import base
from scout_runtime.errors import BadRequest, BusClosed, Forbidden, NoResponders, PayloadTooLarge, Timeout
from scout_runtime.settings import Settings, redact_url

if TYPE_CHECKING:
    import nats.aio.client
    import nats.aio.msg
    import nats.js

log = logging.getLogger(__name__)


def _nats_tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.nats_tls_ca is None and settings.nats_tls_cert is None:
        return None
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
    )
    if settings.nats_tls_cert is not None and settings.nats_tls_key is not None:
        ctx.load_cert_chain(str(settings.nats_tls_cert), str(settings.nats_tls_key))
    return ctx


class _NatsWorkItem(base.WorkItem):
    def __init__(self, msg: nats.aio.msg.Msg, spec: base.WorkQueueSpec, ack_timeout_s: float) -> None:
        super().__init__()
        self._msg = msg
        meta = msg.metadata
        self.subject = msg.subject
        self.data = msg.data
        self.headers = dict(msg.headers or {})
        self.delivery_count = int(meta.num_delivered or 1)
        self.max_deliver = spec.max_deliver
        self.sequence = int(meta.sequence.stream) if meta.sequence else 0
        self._ack_timeout_s = ack_timeout_s

    async def _settle(self, op: Callable[[], Awaitable[Any]], what: str) -> None:
        import nats.errors

        try:
            await op()
        except nats.errors.TimeoutError:
            raise Timeout(f"{what} of seq {self.sequence} was not confirmed") from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as e:
            raise BusClosed(f"{what} of seq {self.sequence} failed: {type(e).__name__}") from None

    async def _ack(self) -> None:
        await self._settle(lambda: self._msg.ack_sync(timeout=self._ack_timeout_s), "ack")

    async def _nak(self, delay_s: float | None) -> None:
        await self._settle(lambda: self._msg.nak(delay=delay_s), "nak")

    async def _term(self) -> None:
        await self._settle(self._msg.term, "term")

    async def _in_progress(self) -> None:
        await self._settle(self._msg.in_progress, "in_progress")


class _NatsSub(base.Subscription):
    def __init__(self, sub: Any, runner: base.Runner) -> None:
        self._sub = sub
        self._runner = runner

    async def _unsubscribe(self) -> None:
        import nats.errors

        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        await self._unsubscribe()
        await self._runner.drain(drain_timeout_s)

    async def abort(self) -> None:
        await self._unsubscribe()
        await self._runner.cancel()


class _NatsConsumer(base.Subscription):
    """Fetch loop over a pull subscription bound to the shared durable consumer."""

    def __init__(
        self, bus: NatsBus, psub: Any, spec: base.WorkQueueSpec, handler: base.WorkHandler, runner: base.Runner
    ) -> None:
        self._bus = bus
        self._psub = psub
        self._spec = spec
        self._handler = handler
        self._runner = runner
        self._stopping = False
        self._fetching = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        import nats.errors

        while not self._stopping:
            await self._runner.acquire()
            self._fetching = True
            failure: Exception | None = None
            msgs: list[Any] = []
            try:
                msgs = await self._psub.fetch(1, timeout=self._bus.poll_s)
            except nats.errors.TimeoutError:
                pass
            except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                self._runner.slots.release()
                return
            except asyncio.CancelledError:
                self._runner.slots.release()
                raise
            except Exception as e:  # consumer deleted, reconnecting, server hiccup: back off and retry
                failure = e
            finally:
                self._fetching = False
            if not msgs:
                self._runner.slots.release()
                if failure is not None:
                    log.warning("fetch from %s failed: %s: %s", self._spec.stream, type(failure).__name__, failure)
                    await asyncio.sleep(self._bus.poll_s)
                continue
            msg = msgs[0]
            if self._stopping:  # fetched while stopping: hand it straight back to another replica
                self._runner.slots.release()
                with contextlib.suppress(Exception):
                    await msg.nak()
                return
            item = _NatsWorkItem(msg, self._spec, self._bus.ack_timeout_s)
            self._runner.start(base.call_work_handler(self._handler, item, self._spec.nak_delay_s))

    async def _end(self, cancel_fetch: bool) -> None:
        import nats.errors

        self._stopping = True
        self._bus._consumers.discard(self)
        if self._task is not None:
            # Waiting for a slot or backing off: cancel. Fetching: let the fetch finish (at most poll_s), so a
            # message the server already handed over is nak'ed back rather than stranded until ack_wait.
            if cancel_fetch or not self._fetching:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(nats.errors.Error):
            await self._psub.unsubscribe()

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        await self._end(cancel_fetch=False)
        await self._runner.drain(drain_timeout_s)

    async def abort(self) -> None:
        await self._end(cancel_fetch=True)
        await self._runner.cancel()


class NatsBus(base.Bus):
    """`Bus` over a nats-py connection (core NATS for control, JetStream for the work queue)."""

    def __init__(
        self, nc: nats.aio.client.Client, *, name: str = "nats", poll_s: float = 1.0, ack_timeout_s: float = 5.0
    ) -> None:
        self.nc = nc
        self.js: nats.js.JetStreamContext = nc.jetstream()
        self.jsm: nats.js.JetStreamManager = nc.jsm()
        self.name = name
        self.poll_s = poll_s
        """How long one fetch waits for work (also bounds how long a graceful `stop` takes)."""
        self.ack_timeout_s = ack_timeout_s
        self._subs: set[_NatsSub] = set()
        self._consumers: set[_NatsConsumer] = set()

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        name: str = "scout",
        url: str | None = None,
        poll_s: float = 1.0,
    ) -> NatsBus:
        """Connect with the settings' servers, credentials, TLS and reconnect policy.

        The first connection fails fast (each server tried twice): a service that cannot reach NATS at start
        should exit and let its supervisor restart it. Once connected, the client reconnects ``nats_max_reconnect``
        times (forever by default), buffering publishes meanwhile. Wrong credentials raise `Forbidden`.
        """
        import nats
        import nats.errors

        settings = settings or Settings()
        servers = [s.strip() for s in (url or settings.nats_url.get_secret_value()).split(",")]
        shown = redact_url(",".join(servers))
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e))
            log.warning("nats (%s): %s: %s", name, type(e).__name__, e)

        async def on_disconnected() -> None:
            log.warning("nats (%s): disconnected from %s", name, shown)

        async def on_reconnected() -> None:
            log.info("nats (%s): reconnected", name)

        options: dict[str, Any] = {
            "servers": servers,
            "name": name,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            "connect_timeout": settings.nats_connect_timeout_s,
            "reconnect_time_wait": settings.nats_reconnect_wait_s,
            "max_reconnect_attempts": 1,
            "allow_reconnect": True,
        }
        if settings.nats_user:
            options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = settings.nats_password.get_secret_value()
        if settings.nats_token is not None:
            options["token"] = settings.nats_token.get_secret_value()
        tls = _nats_tls(settings)
        if tls is not None:
            options["tls"] = tls
            if settings.nats_tls_hostname:
                options["tls_hostname"] = settings.nats_tls_hostname
        try:
            nc = await nats.connect(**options)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            if any("authorization" in m.lower() or "authentication" in m.lower() for m in errors):
                raise Forbidden(f"NATS at {shown} refused the credentials") from None
            raise BusClosed(f"cannot connect to NATS at {shown}: {type(e).__name__}") from None
        nc.options["max_reconnect_attempts"] = settings.nats_max_reconnect
        return cls(nc, name=name, poll_s=poll_s)

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)

    @property
    def is_connected(self) -> bool:
        return bool(self.nc.is_connected)

    def _errors(self) -> Any:
        import nats.errors

        return nats.errors

    async def publish(self, subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        errors = self._errors()
        data, hdrs = self._outgoing(subject, data, headers)
        try:
            await self.nc.publish(subject, data, headers=hdrs)
        except errors.BadSubjectError:
            raise BadRequest(f"invalid subject {subject[:80]!r}") from None
        except (errors.ConnectionClosedError, errors.OutboundBufferLimitError) as e:
            raise BusClosed(f"publish to {subject!r} failed: {type(e).__name__}") from None

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0
    ) -> base.Msg:
        errors = self._errors()
        data, hdrs = self._outgoing(subject, data, headers)
        try:
            reply = await self.nc.request(subject, data, timeout=timeout_s, headers=hdrs)
        except errors.NoRespondersError:
            raise NoResponders(f"no responders on {subject!r}") from None
        except errors.TimeoutError:
            raise Timeout(f"no reply on {subject!r} within {timeout_s}s") from None
        except errors.BadSubjectError:
            raise BadRequest(f"invalid subject {subject[:80]!r}") from None
        except (errors.ConnectionClosedError, errors.OutboundBufferLimitError) as e:
            raise BusClosed(f"request to {subject!r} failed: {type(e).__name__}") from None
        return base.Msg(reply.subject, reply.data, dict(reply.headers or {}), reply.reply or None, self)

    async def subscribe(
        self, subject: str, handler: base.Handler, *, queue: str | None = None, concurrency: int = 1
    ) -> base.Subscription:
        errors = self._errors()
        runner = base.Runner(subject, concurrency)

        async def cb(m: nats.aio.msg.Msg) -> None:
            msg = base.Msg(m.subject, m.data, dict(m.headers or {}), m.reply or None, self)
            await runner.acquire()
            runner.start(base.call_handler(handler, msg))

        try:
            sub = await self.nc.subscribe(subject, queue=queue or "", cb=cb)
        except errors.BadSubjectError:
            raise BadRequest(f"invalid subject {subject[:80]!r}") from None
        except errors.ConnectionClosedError:
            raise BusClosed("the NATS connection is closed") from None
        # Round-trip to the server so the interest is registered when subscribe returns: a request sent right
        # after (from any connection) must find this responder. While reconnecting, the client re-subscribes itself.
        with contextlib.suppress(errors.Error, TimeoutError):
            await self.nc.flush(timeout=5)
        wrapped = _NatsSub(sub, runner)
        self._subs.add(wrapped)
        return wrapped

    async def ensure_work_queue(self, spec: base.WorkQueueSpec) -> None:
        from nats.js import api
        from nats.js.errors import BadRequestError

        stream = api.StreamConfig(
            name=spec.stream,
            subjects=list(spec.subjects),
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            max_age=spec.max_age_s,
            max_msg_size=spec.max_msg_bytes,
            duplicate_window=spec.duplicate_window_s,
            discard=api.DiscardPolicy.OLD,
            num_replicas=1,
        )
        consumer = api.ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=spec.ack_wait_s,
            max_deliver=spec.max_deliver,
            max_ack_pending=spec.max_ack_pending,
        )
        jsm = self.jsm
        try:
            try:
                await jsm.add_stream(stream)
            except BadRequestError as e:
                if e.err_code != 10058:  # "stream name already in use with a different configuration"
                    raise
                await jsm.update_stream(stream)
            await jsm.add_consumer(spec.stream, consumer)  # creates, or updates the editable fields
        except self._errors().TimeoutError:
            raise Timeout("JetStream did not answer (is JetStream enabled on the server?)") from None

    async def delete_work_queue(self, spec: base.WorkQueueSpec) -> None:
        from nats.js.errors import NotFoundError

        with contextlib.suppress(NotFoundError):
            await self.jsm.delete_stream(spec.stream)

    async def _enqueue(
        self, subject: str, data: bytes, hdrs: dict[str, str] | None, msg_id: str | None, timeout_s: float
    ) -> base.EnqueueResult:
        from nats.js.errors import APIError, NoStreamResponseError

        errors = self._errors()
        try:
            ack = await self.js.publish(subject, data, timeout=timeout_s, headers=hdrs)
        except NoStreamResponseError:
            raise NoResponders(f"no stream captures {subject!r}") from None
        except errors.TimeoutError:
            raise Timeout(f"JetStream did not acknowledge {subject!r} within {timeout_s}s") from None
        except APIError as e:
            if e.err_code == 10054:  # "message size exceeds maximum allowed"
                raise PayloadTooLarge("message exceeds the stream's max_msg_bytes") from None
            raise
        except (errors.ConnectionClosedError, errors.OutboundBufferLimitError) as e:
            raise BusClosed(f"enqueue to {subject!r} failed: {type(e).__name__}") from None
        return base.EnqueueResult(ack.stream, int(ack.seq), bool(ack.duplicate))

    async def consume(
        self, spec: base.WorkQueueSpec, handler: base.WorkHandler, *, concurrency: int = 1
    ) -> base.Subscription:
        from nats.js.errors import NotFoundError

        try:
            psub = await self.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
            await psub.consumer_info()
        except NotFoundError:
            raise NoResponders(f"no work queue {spec.stream!r}; call ensure_work_queue first") from None
        consumer = _NatsConsumer(self, psub, spec, handler, base.Runner(spec.stream, concurrency))
        self._consumers.add(consumer)
        consumer.start()
        return consumer

    async def queue_stats(self, spec: base.WorkQueueSpec) -> base.QueueStats:
        from nats.js.errors import NotFoundError

        try:
            info = await self.jsm.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            raise NoResponders(f"no work queue {spec.stream!r}") from None
        return base.QueueStats(
            int(info.num_pending or 0), int(info.num_ack_pending or 0), int(info.num_redelivered or 0)
        )

    async def close(self, drain: bool = False) -> None:
        if self.nc.is_closed:
            return
        for sub in [*self._subs, *self._consumers]:
            if drain:
                await sub.stop()
            else:
                await sub.abort()
        self._subs.clear()
        with contextlib.suppress(Exception):
            await self.nc.close()
