"""Quantizer wiring: ``scout.v1.encode`` (queue group), the edge store (raw KV in), the cloud store (blobs out) and
the decode work queue (it enqueues, so it makes sure the queue exists)."""

from __future__ import annotations

import asyncio
from typing import Unpack

from scout_runtime.bus import Msg, Subscription, WorkQueueSpec
from scout_runtime.messages import EncodeReply, EncodeRequest
from scout_runtime.settings import Settings
from scout_runtime.store import BlobStore
from scout_services.common import RoleService, ServiceOptions, configure_logging, run_service
from scout_services.quantizer.args import QuantizerArgs
from scout_services.quantizer.handlers import QuantizerHandlers

QUEUE_GROUP = "scout-quantizers"


class QuantizerService(RoleService):
    """The quantizer role (see the package docstring)."""

    def __init__(
        self, settings: Settings | None = None, args: QuantizerArgs | None = None, **options: Unpack[ServiceOptions]
    ) -> None:
        super().__init__("quantizer", settings, **options)
        self.args = args or QuantizerArgs()
        self.edge: BlobStore | None = None
        self.cloud: BlobStore | None = None
        self.handlers: QuantizerHandlers | None = None
        self._sub: Subscription | None = None

    async def start(self) -> None:
        await self._serve_health()
        self.edge = self._open_store("edge")
        self.cloud = self._open_store("cloud")
        bus = await self._connect("quantizer")
        await bus.ensure_work_queue(WorkQueueSpec.for_decode(self.role.settings))
        self.handlers = QuantizerHandlers(self.role, bus, self.edge, self.cloud, self.args)
        self._sub = await self._serve(
            self.role.subjects.encode,
            EncodeRequest,
            self._encode,
            queue=QUEUE_GROUP,
            concurrency=self.args.concurrency,
            op="encode",
        )

    async def _encode(self, req: EncodeRequest, msg: Msg) -> EncodeReply:
        assert self.handlers is not None
        return await self.handlers.encode(req)

    async def stop(self) -> None:
        self.role.health.draining = True
        if self._sub is not None:
            await self._sub.stop(drain_timeout_s=60)
        await self._close(self.edge, self.cloud)


def main() -> None:
    """``scout serve quantizer``."""
    configure_logging()
    asyncio.run(run_service(QuantizerService(set_global=True)))
