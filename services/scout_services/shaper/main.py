"""Shaper sidecar wiring: tc on the interface, the replay clock, the delay relay, link state on the bus, the gauge.

Start order: health endpoint; destinations resolved and the trace loaded; the first rate installed; the relay;
then the replay and the bus announcer run as tasks. A stop (SIGTERM/SIGINT through `run_service`, or a start
that failed half-way) cancels the tasks, waits for any tc call in flight, and removes the qdiscs before anything
else is closed, so the interface is left as it was found. A SIGKILL cannot be handled: the next start replaces
whatever root qdisc it finds.

Besides the ready line, stdout carries one JSON line per applied rate (``{"event": "rate", …}``) and
``{"event": "trace_end"}`` when a non-looping replay ends: what a person running ``scout shape`` watches, and what
the tests align measured goodput with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Gauge
from pydantic import ValidationError

from scout.channel.shaping import RateStep, format_rate, relay_window_bytes, split_host_port
from scout_runtime.bus import Bus, connect_bus
from scout_runtime.errors import ScoutError
from scout_runtime.messages import LinkState
from scout_runtime.settings import Settings, redact_url
from scout_services.common import Role, configure_logging, run_service
from scout_services.shaper.args import ShaperArgs
from scout_services.shaper.handlers import (
    LinkShaper,
    RateSource,
    ShaperError,
    TcRunner,
    check_privileges,
    close_quietly,
    kernel_hz,
    layout_for,
    rate_source,
)
from scout_services.shaper.relay import DEFAULT_CHUNK_BYTES, DelayRelay

log = logging.getLogger("scout.shaper")
BUS_RETRY_S = 1.0


def _raise_sigterm() -> None:
    signal.raise_signal(signal.SIGTERM)


class ShaperService:
    """The shaper role (see the module docstring)."""

    def __init__(
        self,
        args: ShaperArgs,
        settings: Settings | None = None,
        *,
        registry: CollectorRegistry | None = None,
        set_global: bool = False,
        health_port: int | None = None,
        out: TextIO | None = None,
        on_fatal: Callable[[], None] = _raise_sigterm,
    ) -> None:
        self.role = Role.create("shaper", settings, registry=registry, set_global=set_global)
        self.args = args
        self.health_port = health_port
        self.out = out or sys.stdout
        self.on_fatal = on_fatal
        """Called when the replay cannot go on (tc failed): by default SIGTERM to this process, so `run_service`
        stops it the graceful way (qdiscs removed) and `run` exits non-zero."""
        self.failed: str | None = None
        self.rate_gauge = self._link_gauge(
            "scout_shaper_rate_bps", "Rate the shaper has configured on the link, bit/s (0 before the first is applied)"
        )
        self.delay_gauge = self._link_gauge("scout_shaper_delay_seconds", "One-way delay the relay adds to the uplink")
        self.shaper: LinkShaper | None = None
        self.relay: DelayRelay | None = None
        self.bus: Bus | None = None
        self.rate_bps: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._http: Any = None
        self._port = 0

    def _link_gauge(self, name: str, description: str) -> Gauge:
        """A gauge of this shaper's link (labelled with its device and interface) in the role's registry."""
        gauge = Gauge(name, description, ["device_id", "iface"], registry=self.role.metrics.registry)
        return gauge.labels(self.args.device_id, self.args.iface)

    def ports(self) -> dict[str, int]:
        ports = {"metrics": self._port}
        if self.relay is not None:
            ports["relay"] = self.relay.port
        return ports

    async def start(self) -> None:
        args = self.args
        role = self.role
        self._http, self._port = await role.serve_health(port=self.health_port)
        role.health.checks["shaping"] = self._shaping_ok
        layout = await asyncio.to_thread(layout_for, args)
        source = await asyncio.to_thread(rate_source, args)
        hz = args.hz or kernel_hz()
        self.shaper = LinkShaper(
            layout, TcRunner(args.iface), peak_bps=source.max_rate_bps, hz=hz, queue_s=args.queue_ms / 1000.0
        )
        where = f"{args.iface}" + (f" in netns {args.netns}" if args.netns else "")
        only = f", only to {', '.join(str(d) for d in layout.destinations)}" if layout.destinations else ""
        log.info("shaping %s%s: %s (HZ %d, queue %g ms)", where, only, source.description, hz, args.queue_ms)
        if args.publish:
            # One attempt before shaping starts, so the first rate is announced too; if NATS is not up yet,
            # shaping does not wait for it: the announcer keeps trying in the background.
            role.health.checks["bus"] = self._bus_ok
            await self._connect(warn=False)
            self._tasks.append(asyncio.create_task(self._announce()))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await self._apply(source.first)
        if args.relay_target is not None:
            await self._start_relay(source.max_rate_bps)
        self._tasks.append(asyncio.create_task(self._replay(source, t0)))

    async def _start_relay(self, max_rate_bps: float) -> None:
        args = self.args
        assert args.relay_target is not None
        listen_host, listen_port = split_host_port(args.relay_listen)
        target_host, target_port = split_host_port(args.relay_target)
        assert listen_port is not None and target_port is not None  # checked by ShaperArgs
        delay_s = args.delay_ms / 1000.0
        window = relay_window_bytes(max_rate_bps, delay_s, DEFAULT_CHUNK_BYTES)
        self.relay = DelayRelay(
            (listen_host, listen_port), (target_host, target_port), delay_s=delay_s, window_bytes=window
        )
        try:
            await self.relay.start()
        except OSError as e:
            self.relay = None
            raise ShaperError(f"the relay cannot listen on {args.relay_listen}: {e}") from None
        self.delay_gauge.set(delay_s)

    async def _shaping_ok(self) -> bool:
        return self.shaper is not None and self.shaper.params is not None and self.failed is None

    async def _bus_ok(self) -> bool:
        return self.bus is not None and self.bus.is_connected

    def _emit(self, event: dict[str, Any]) -> None:
        print(json.dumps(event), file=self.out, flush=True)

    async def _apply(self, step: RateStep) -> None:
        assert self.shaper is not None
        params = await self.shaper.apply(step.rate_bps)
        self.rate_bps = step.rate_bps
        self.rate_gauge.set(step.rate_bps)
        self.role.metrics.count("shape")
        log.debug("rate %s, burst %d B, limit %d B", format_rate(step.rate_bps), params.burst_bytes, params.limit_bytes)
        self._emit(
            {
                "event": "rate",
                "rate_bps": step.rate_bps,
                "burst_bytes": params.burst_bytes,
                "limit_bytes": params.limit_bytes,
                "t_s": step.t_s,
                "at": time.time(),
            }
        )
        await self._publish()

    async def _replay(self, source: RateSource, t0: float) -> None:
        """Apply each step at its time; a step already superseded when it comes due (tc was slow) is skipped."""
        loop = asyncio.get_running_loop()
        try:
            nxt = next(source.rest, None)
            while nxt is not None:
                step, nxt = nxt, next(source.rest, None)
                if nxt is not None and t0 + nxt.t_s <= loop.time():
                    continue
                delay = t0 + step.t_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._apply(step)
            if source.end_s is not None:
                delay = t0 + source.end_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                log.info("trace ended; holding %s", format_rate(self.rate_bps or 0.0))
                self._emit({"event": "trace_end", "rate_bps": self.rate_bps, "at": time.time()})
        except ShaperError as e:
            self.failed = str(e)
            self.role.metrics.error("shape", "tc_failed")
            log.error("stopping: %s", e)
            self.on_fatal()

    async def _publish(self) -> None:
        """The current rate as `LinkState` (``source="shaper"``) on ``link.<device_id>``, if the bus is up."""
        bus = self.bus
        if bus is None or self.rate_bps is None or not bus.is_connected:
            return
        state = LinkState(device_id=self.args.device_id, rate_bps=self.rate_bps, source="shaper", at=time.time())
        try:
            await bus.publish(self.role.subjects.link(self.args.device_id), state.to_bytes())
        except ScoutError as e:
            log.warning("link state not published: %s", e)

    async def _connect(self, *, warn: bool) -> bool:
        settings = self.role.settings
        try:
            self.bus = await connect_bus(settings, name=f"shaper-{settings.instance_id}")
        except ScoutError as e:
            if warn:
                url = redact_url(settings.nats_url.get_secret_value())
                log.warning("bus at %s not reachable yet (%s); retrying every %g s", url, e, BUS_RETRY_S)
            return False
        return True

    async def _announce(self) -> None:
        """Connect to the bus if not yet (retrying: shaping never waits for NATS), then publish the current rate
        now and every ``publish_interval_s`` (changes are published as they are applied)."""
        warn = True
        while self.bus is None:
            if not await self._connect(warn=warn):
                warn = False
                await asyncio.sleep(BUS_RETRY_S)
            else:
                await self._publish()
        interval = self.args.publish_interval_s
        while interval > 0:
            await asyncio.sleep(interval)
            await self._publish()

    async def stop(self) -> None:
        self.role.health.draining = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.relay is not None:
            await close_quietly("closing the relay", self.relay.close())
        if self.shaper is not None:
            await close_quietly("removing the qdiscs", self.shaper.remove())
        if self.bus is not None:
            await close_quietly("closing the bus", self.bus.close())
        if self._http is not None:
            await close_quietly("stopping the health endpoint", self._http.cleanup())


def _error(message: str) -> None:
    """One line on stderr: the whole of what an operator needs to fix it."""
    print(f"shaper: error: {message}", file=sys.stderr, flush=True)


def run(args: ShaperArgs, settings: Settings | None = None, *, metrics_port: int | None = None) -> int:
    """Run the shaper in this process until SIGTERM/SIGINT; the exit status (0 ok, 1 failed while running,
    2 could not start)."""
    configure_logging()
    try:
        check_privileges(args)
    except ShaperError as e:
        _error(str(e))
        return 2
    service = ShaperService(args, settings, set_global=True, health_port=metrics_port)
    try:
        asyncio.run(run_service(service))
    except ShaperError as e:
        _error(str(e))
        return 2
    if service.failed is not None:
        _error(service.failed)
        return 1
    return 0


def describe_validation(error: ValidationError) -> str:
    """Settings errors as one line (field: message; …), without the input values."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'settings'}: "
        + str(e.get("msg", "invalid")).removeprefix("Value error, ")
        for e in error.errors(include_url=False, include_input=False)
    )


def main() -> None:
    """``scout serve shaper``: settings from ``SCOUT_SHAPER_*`` and ``SCOUT_*``."""
    try:
        args = ShaperArgs()
    except ValidationError as e:
        _error(describe_validation(e))
        sys.exit(2)
    sys.exit(run(args))
