"""Cloud decoder wiring: the model, the cloud store, and a consumer of the shared durable decode consumer (every
replica fetches from the same one: the queue group), plus the queue-lag gauge (KEDA scales on the same number)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Unpack

from scout_runtime.bus import Subscription, WorkItem, WorkQueueSpec
from scout_runtime.errors import ScoutError
from scout_runtime.settings import Settings
from scout_runtime.store import BlobStore
from scout_services.cloud_decoder.args import DecoderArgs
from scout_services.cloud_decoder.handlers import DecoderHandlers
from scout_services.common import RoleService, ServiceOptions, configure_logging, run_service
from scout_services.compute import load_role_model

log = logging.getLogger("scout.decoder")


class CloudDecoderService(RoleService):
    """The cloud-decoder role (see the package docstring)."""

    def __init__(
        self,
        settings: Settings | None = None,
        args: DecoderArgs | None = None,
        *,
        model: Any = None,
        **options: Unpack[ServiceOptions],
    ) -> None:
        super().__init__("cloud_decoder", settings, **options)
        self.args = args or DecoderArgs()
        self.model = model
        self.cloud: BlobStore | None = None
        self.handlers: DecoderHandlers | None = None
        self.spec: WorkQueueSpec | None = None
        self._consumer: Subscription | None = None
        self._lag_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        role, settings = self.role, self.role.settings
        await self._serve_health()
        if self.model is None:
            self.model = await asyncio.to_thread(load_role_model, self.args)
        self.cloud = self._open_store("cloud")
        bus = await self._connect("decoder")
        self.spec = WorkQueueSpec.for_decode(settings)
        await bus.ensure_work_queue(self.spec)
        self.handlers = DecoderHandlers(role, bus, self.cloud, self.model, self.args.model, self.args)
        self._consumer = await bus.consume(self.spec, self._handle, concurrency=settings.max_inflight_decodes)
        self._lag_task = asyncio.create_task(self._watch_lag())

    async def _handle(self, item: WorkItem) -> None:
        assert self.handlers is not None
        await self.handlers.handle(item)

    async def _watch_lag(self) -> None:
        assert self.bus is not None and self.spec is not None
        while True:
            try:
                stats = await self.bus.queue_stats(self.spec)
                self.role.metrics.queue_lag.set(stats.lag)
            except ScoutError as e:
                log.debug("queue stats unavailable: %s", e)
            await asyncio.sleep(self.args.lag_interval_s)

    async def stop(self) -> None:
        """Graceful: take no new work, finish (reply and ack) what is in flight, then disconnect."""
        self.role.health.draining = True
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
        if self._consumer is not None:
            await self._consumer.stop(drain_timeout_s=max(60.0, self.role.settings.ack_wait_s))
        await self._close(self.cloud)


def main() -> None:
    """``scout serve cloud_decoder``."""
    configure_logging()
    asyncio.run(run_service(CloudDecoderService(set_global=True)))
