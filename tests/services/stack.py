"""The service stack the end-to-end tests run: every role as its own OS process
(``python -m scout_cli.main serve ROLE``,
started by `scout_testbed.launcher`) against real NATS (JetStream) and Redis, under a namespace of its own, exporting
traces over OTLP/HTTP to an oteltap receiver that runs in a thread of the test process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from scout_testbed.launcher import RoleProcess, role_env, spawn_role, wait_ready

Proc = RoleProcess

MIXED_PLAN = "mixed:0=16,5=8,29=16"
"""A non-trivial bit plan for SmolLM2's 30 layers (4 bits, two layers at 16, one at 8)."""


class SpanSink:
    """An OTLP/HTTP receiver (oteltap) on its own event loop in a thread; spans are collected into a list."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="oteltap", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(15) or self._error is not None:
            raise RuntimeError(f"the OTLP receiver did not start: {self._error!r}")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:
            self._error = e
            self._started.set()

    async def _main(self) -> None:
        from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

        receiver = OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=self.port))
        await receiver.start()
        self._stop = asyncio.Event()

        async def collect() -> None:
            async for span in receiver.stream_traces():
                with self.lock:
                    self.spans.append(span)

        task = asyncio.create_task(collect())
        self._started.set()
        await self._stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await receiver.stop()

    def snapshot(self) -> list[Any]:
        with self.lock:
            return list(self.spans)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


class ServiceStack:
    """Starts, restarts and stops the role processes of one namespace."""

    def __init__(self, *, namespace: str, nats_url: str, redis_url: str, sink: SpanSink) -> None:
        self.namespace = namespace
        self.nats_url = nats_url
        self.redis_url = redis_url
        self.sink = sink
        self.otlp_port = sink.port
        self.workdir = Path(tempfile.mkdtemp(prefix=f"scout-services-{namespace}-"))
        self.procs: dict[str, Proc] = {}
        self.exit_codes: dict[str, int] = {}

    def env(self, name: str) -> dict[str, str]:
        return role_env(
            name=name,
            namespace=self.namespace,
            nats_url=self.nats_url,
            store_url=self.redis_url,
            extra={
                "SCOUT_ACK_WAIT_S": "3",
                "SCOUT_MAX_DELIVER": "3",
                "SCOUT_NAK_DELAY_S": "0.2",
                "SCOUT_REQUEST_TIMEOUT_S": "180",
                "SCOUT_STORE_TTL_S": "900",
                "SCOUT_SELECTOR_DTYPE": "fp32",
                "SCOUT_DECODER_DTYPE": "fp32",
                "SCOUT_POLICY_MIXED_PLAN": MIXED_PLAN,
                "SCOUT_POLICY_ESTIMATOR": "last",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.otlp_port}",
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            },
        )

    def spawn(self, role: str, name: str) -> Proc:
        proc = spawn_role(role, name, self.env(name), self.workdir)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        procs = [
            self.spawn("transport_policy", "policy"),
            self.spawn("quantizer", "quantizer"),
            self.spawn("cloud_decoder", "decoder-a"),
            self.spawn("cloud_decoder", "decoder-b"),
            self.spawn("selector", "selector"),
        ]
        wait_ready(procs)

    def decoders(self) -> list[Proc]:
        return [p for name, p in sorted(self.procs.items()) if name.startswith("decoder-")]

    def ensure_decoders(self) -> list[Proc]:
        """Both decoders alive (restarting any a test killed or stopped)."""
        fresh = [self.spawn("cloud_decoder", p.name) for p in self.decoders() if not p.alive]
        if fresh:
            wait_ready(fresh)
        return self.decoders()

    @property
    def selector(self) -> Proc:
        return self.procs["selector"]

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        rc = proc.stop(sig, timeout_s)
        self.exit_codes[proc.name] = rc
        return rc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.alive:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            self.stop(proc)
