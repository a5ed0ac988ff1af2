"""Transport policy wiring: ``scout.v1.plan`` (queue group, so replicas share requests) and every device's
``scout.v1.link.<device>`` (no queue group: each replica keeps the whole link state)."""

from __future__ import annotations

import asyncio
import logging
from typing import Unpack

from scout.policy.estimators import LinkBook
from scout_runtime.bus import Msg, Subscription
from scout_runtime.errors import ScoutError
from scout_runtime.messages import LinkState, Plan, PlanRequest, parse
from scout_runtime.settings import Settings
from scout_services.common import RoleService, ServiceOptions, configure_logging, run_service
from scout_services.transport_policy.args import PolicyArgs
from scout_services.transport_policy.handlers import PolicyHandlers, load_policy

log = logging.getLogger("scout.policy")
QUEUE_GROUP = "scout-policy"


class TransportPolicyService(RoleService):
    """The transport-policy role (see the package docstring)."""

    def __init__(
        self, settings: Settings | None = None, args: PolicyArgs | None = None, **options: Unpack[ServiceOptions]
    ) -> None:
        super().__init__("transport_policy", settings, **options)
        self.args = args or PolicyArgs()
        self.handlers: PolicyHandlers | None = None
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        role = self.role
        await self._serve_health()
        policy = await asyncio.to_thread(load_policy, self.args)
        self.handlers = PolicyHandlers(
            policy, LinkBook(self.args.estimator, self.args.prior_bps, self.args.max_devices)
        )
        bus = await self._connect("policy")
        self._subs.append(await bus.subscribe(role.subjects.link_all, self._on_link))
        self._subs.append(
            await self._serve(
                role.subjects.plan,
                PlanRequest,
                self._plan,
                queue=QUEUE_GROUP,
                concurrency=self.args.concurrency,
                op="plan",
            )
        )

    async def _on_link(self, msg: Msg) -> None:
        try:
            state = parse(LinkState, msg.data, limits=self.role.limits)
        except ScoutError as e:
            self.role.metrics.error("link", e.code.value)
            log.warning("ignored a link-state message on %s: %s", msg.subject, e)
            return
        if msg.subject != self.role.subjects.link(state.device_id):
            self.role.metrics.error("link", "bad_request")
            log.warning("ignored link state for %s published on %s", state.device_id, msg.subject)
            return
        assert self.handlers is not None
        self.handlers.on_link(state)
        self.role.metrics.count("link")

    async def _plan(self, req: PlanRequest, msg: Msg) -> Plan:
        assert self.handlers is not None
        self.role.mark_current(request_id=req.request_id, device_id=req.device_id)
        plan = self.handlers.plan(req)
        self.role.mark_current(
            mode=plan.mode,
            retention=plan.retention,
            link_rate_bps=plan.bandwidth_bps,
            nbytes=plan.expected_bytes,
            point=plan.point,
            feasible=plan.feasible,
        )
        return plan

    async def stop(self) -> None:
        self.role.health.draining = True
        for sub in self._subs:
            await sub.stop(drain_timeout_s=10)
        await self._close()


def main() -> None:
    """``scout serve transport_policy``."""
    configure_logging()
    asyncio.run(run_service(TransportPolicyService(set_global=True)))
