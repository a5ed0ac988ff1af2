"""Quantizer wiring: ``scout.v1.encode`` (queue group), the edge store (raw KV in), the cloud store (blobs out) and
the decode work queue (it enqueues, so it makes sure the queue exists)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from scout_runtime.bus import Bus, Msg, Subscription, WorkQueueSpec, connect_bus
from scout_runtime.messages import EncodeReply, EncodeRequest
from scout_runtime.rpc import serve
from scout_runtime.settings import Settings
from scout_runtime.store import BlobStore, open_store
from scout_runtime.telemetry import Telemetry
from scout_services.common import Role, configure_logging, run_service
from scout_services.quantizer.args import QuantizerArgs
from scout_services.quantizer.handlers import QuantizerHandlers

QUEUE_GROUP = "scout-quantizers"


class QuantizerService:
    """The quantizer role (see the package docstring)."""

    def __init__(
        self,
        settings: Settings | None = None,
        args: QuantizerArgs | None = None,
        *,
        telemetry: Telemetry | None = None,
        registry: CollectorRegistry | None = None,
        set_global: bool = False,
        health_port: int | None = None,
    ) -> None:
        self.role = Role.create("quantizer", settings, telemetry=telemetry, registry=registry, set_global=set_global)
        self.args = args or QuantizerArgs()
        self.health_port = health_port
        self.bus: Bus | None = None
        self.edge: BlobStore | None = None
        self.cloud: BlobStore | None = None
        self.handlers: QuantizerHandlers | None = None
        self._sub: Subscription | None = None
        self._http: Any = None
        self._port = 0

    def ports(self) -> dict[str, int]:
        return {"metrics": self._port}

    async def start(self) -> None:
        role, settings = self.role, self.role.settings
        self._http, self._port = await role.serve_health(port=self.health_port)
        self.edge = open_store(settings.edge_store_url.get_secret_value(), settings=settings)
        self.cloud = open_store(settings.cloud_store_url.get_secret_value(), settings=settings)
        self.bus = bus = await connect_bus(settings, name=f"quantizer-{settings.instance_id}")
        await bus.ensure_work_queue(WorkQueueSpec.for_decode(settings))
        role.health.checks.update({"bus": self._bus_ok, "edge_store": self.edge.ping, "cloud_store": self.cloud.ping})
        self.handlers = QuantizerHandlers(role, bus, self.edge, self.cloud, self.args)
        self._sub = await serve(
            bus,
            role.subjects.encode,
            EncodeRequest,
            self._encode,
            queue=QUEUE_GROUP,
            concurrency=self.args.concurrency,
            limits=role.limits,
            tracer=role.telemetry.tracer,
            metrics=role.metrics,
            op="encode",
        )

    async def _bus_ok(self) -> bool:
        return self.bus is not None and self.bus.is_connected

    async def _encode(self, req: EncodeRequest, msg: Msg) -> EncodeReply:
        assert self.handlers is not None
        return await self.handlers.encode(req)

    async def stop(self) -> None:
        self.role.health.draining = True
        if self._sub is not None:
            await self._sub.stop(drain_timeout_s=60)
        if self.bus is not None:
            await self.bus.close()
        for store in (self.edge, self.cloud):
            if store is not None:
                await store.close()
        if self._http is not None:
            await self._http.cleanup()


def main() -> None:
    """``scout serve quantizer``."""
    configure_logging()
    asyncio.run(run_service(QuantizerService(set_global=True)))
