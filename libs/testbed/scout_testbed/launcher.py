"""Start roles as separate OS processes (``python -m scout_cli.main serve ROLE``) and wait for their ready lines.

What the end-to-end tests and ``scout bench pipeline`` use to run a stack without a cluster. A role process prints
one JSON line on stdout when it is ready (`scout_services.common.run_service`), with the ports it bound (port 0 = any
free one), so several stacks can run side by side on one machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RoleProcess", "role_env", "spawn_role", "wait_ready"]


@dataclass
class RoleProcess:
    """One role process: its ports (from the ready line), its log file, and the JSON lines it printed."""

    role: str
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    lines: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    ports: dict[str, int] = field(default_factory=dict)
    instance: str = ""

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def metrics(self) -> str:
        """The Prometheus exposition of the role's /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def inflight(self) -> float:
        """The role's ``scout_inflight`` gauge (a decoder: 1 while it works on a request)."""
        m = re.search(rf'^scout_inflight\{{role="{self.role}"\}} ([0-9.e+-]+)$', self.metrics(), re.M)
        return float(m.group(1)) if m else 0.0

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Signal the process (SIGTERM: graceful) and wait; killed if it outlives ``timeout_s``. The exit code."""
        if self.alive:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)


def role_env(
    *, name: str, namespace: str, nats_url: str, store_url: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of one role process: this environment without its SCOUT_*/OTEL_* variables, one torch
    thread, the stack's namespace, NATS and store, an instance id, any free ports, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "OTEL_"))}
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "SCOUT_NAMESPACE": namespace,
            "SCOUT_INSTANCE_ID": f"{name}-{namespace}",
            "SCOUT_NATS_URL": nats_url,
            "SCOUT_EDGE_STORE_URL": store_url,
            "SCOUT_CLOUD_STORE_URL": store_url,
            "SCOUT_HTTP_HOST": "127.0.0.1",
            "SCOUT_HTTP_PORT": "0",
            "SCOUT_METRICS_PORT": "0",
        }
    )
    env.update(extra or {})
    return env


def spawn_role(role: str, name: str, env: Mapping[str, str], workdir: Path) -> RoleProcess:
    """Start ``scout serve <role>``; stderr goes to ``<workdir>/<name>.log``."""
    log = workdir / f"{name}.log"
    with log.open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "scout_cli.main", "serve", role],
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    proc = RoleProcess(role=role, name=name, popen=popen, log=log)

    def read() -> None:
        assert popen.stdout is not None
        for raw in popen.stdout:
            with contextlib.suppress(ValueError):
                proc.lines.put(json.loads(raw))

    threading.Thread(target=read, name=f"stdout-{name}", daemon=True).start()
    return proc


def wait_ready(procs: Iterable[RoleProcess], timeout_s: float = 240.0) -> None:
    """Wait for every process's ready line (RuntimeError with its log's tail if one dies or times out)."""
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not proc.alive:
                raise RuntimeError(f"{proc.name} did not become ready (rc={proc.popen.poll()}):\n{proc.tail()}")
            try:
                line = proc.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line.get("event") == "ready":
                proc.ports, proc.instance = dict(line["ports"]), str(line["instance"])
                break
