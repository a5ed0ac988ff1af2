"""Network namespaces, a veth link, and the processes a shaping test starts, all removed however the test ends.

`netns_link()` creates two namespaces, ``edge`` and ``cloud``, joined by a veth pair (edge 10.77.0.1, cloud
10.77.0.2 and 10.77.0.3). Names carry this run's tag (`RUN_TAG`: the pytest process id and random bits) and a
counter, so concurrent runs and repeated tests never collide. Every process a test starts goes through the link's
`Processes`; on exit, whatever happened, they are stopped (SIGTERM, then SIGKILL), the namespaces are deleted
(their veths and qdiscs go with them), and the clean-up is verified: a leftover raises `LeftBehind`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

RUN_TAG = f"{os.getpid() % 100_000:05d}{secrets.token_hex(2)}"
NS_PREFIX = f"sct{RUN_TAG}"
TRAFFIC = str(Path(__file__).with_name("traffic.py"))
REPO = Path(__file__).resolve().parents[2]
EDGE_IP, CLOUD_IP, CLOUD_IP2 = "10.77.0.1", "10.77.0.2", "10.77.0.3"
PORT = 5201
ALL_PIDS: list[int] = []
"""Every process any test of this run started (checked once more at the end of the session)."""

_counter = itertools.count()


class LeftBehind(AssertionError):
    """Clean-up did not remove everything a test created."""


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


PROBE_TBF = ("tbf", "rate", "1mbit", "burst", "5000", "limit", "10000")


@cache
def netns_unavailable() -> str | None:
    """Why these tests cannot run here (the skip reason), or None: root, iproute2, and a working
    ``ip netns add`` + veth + tbf, probed once with a throw-away namespace."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces and change qdiscs"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) is not installed"
    probe = f"{NS_PREFIX}probe"
    try:
        steps = [
            ["ip", "netns", "add", probe],
            ["ip", "-n", probe, "link", "add", "pa", "type", "veth", "peer", "name", "pb"],
            ["tc", "-n", probe, "qdisc", "add", "dev", "pa", "root", *PROBE_TBF],
        ]
        for argv in steps:
            out = run(argv, check=False)
            if out.returncode != 0:
                return f"`{' '.join(argv[:3])} …` does not work here: {out.stderr.strip()[:200]}"
    finally:
        run(["ip", "netns", "del", probe], check=False)
    return None


def clean_env() -> dict[str, str]:
    """This environment without SCOUT_* and OTEL_* variables (a developer's settings must not leak into a test)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "OTEL_"))}


def namespaces() -> list[str]:
    """Named network namespaces of this run."""
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NS_PREFIX)]


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie counts as gone: it holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


# ----------------------------------------------------------------------------------------------------------------
# processes
# ----------------------------------------------------------------------------------------------------------------
class Proc:
    """A started process whose stdout (JSON lines, or text) and stderr are collected by threads."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=REPO,
        )
        ALL_PIDS.append(self.popen.pid)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.stderr, False), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: Any, into: list[str], forward: bool) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))
            if forward:
                self.lines.put((time.time(), line.rstrip("\n")))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def next_line(self, timeout: float = 30.0) -> str:
        """The next stdout line; fails with the process's stderr if none comes."""
        try:
            return self.lines.get(timeout=timeout)[1]
        except queue.Empty:
            raise AssertionError(f"no output from {self.argv[:6]} in {timeout}s; stderr: {self.tail()}") from None

    def next_json(self, timeout: float = 30.0, event: str | None = None) -> dict[str, Any]:
        """The next JSON line (with ``event`` equal to ``event``, if given), skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.01, deadline - time.monotonic()))
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event is None or (isinstance(obj, dict) and obj.get("event") == event):
                return obj

    def json_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.stdout):
            with contextlib.suppress(json.JSONDecodeError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.json_lines() if e.get("event") == kind]

    def tail(self, n: int = 8) -> str:
        return " | ".join(self.stderr[-n:])

    def wait(self, timeout: float = 30.0) -> int:
        rc = self.popen.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=5)
        return rc

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the way the kubelet stops a sidecar."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def stop(self) -> None:
        """Make sure it is gone: SIGTERM, then SIGKILL after 5 s."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        for stream in (self.popen.stdout, self.popen.stderr):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]


@dataclass
class Processes:
    """The processes of one test; `stop_all` ends each of them by its own pid."""

    started: list[Proc] = field(default_factory=list)

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(argv, env)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


# ----------------------------------------------------------------------------------------------------------------
# the link
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Link:
    """Two namespaces joined by a veth pair; the shaped side is the edge's (its egress is the uplink)."""

    edge: str
    cloud: str
    edge_if: str
    cloud_if: str
    procs: Processes = field(default_factory=Processes)

    def in_ns(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def qdisc_kinds(self) -> list[str]:
        """Kinds of the qdiscs on the edge veth (``["noqueue"]`` when nobody shapes it)."""
        out = run(["tc", "-j", "-n", self.edge, "qdisc", "show", "dev", self.edge_if]).stdout
        return [q["kind"] for q in json.loads(out or "[]")]

    def tbf_rate_bps(self) -> float:
        """The rate of the tbf on the edge veth (root or leaf), as the kernel reports it (bytes/s x 8)."""
        out = run(["tc", "-j", "-n", self.edge, "qdisc", "show", "dev", self.edge_if]).stdout
        (tbf,) = [q for q in json.loads(out) if q["kind"] == "tbf"]
        return float(tbf["options"]["rate"]) * 8

    def serve(self) -> Proc:
        """The traffic server in the cloud namespace, on every cloud address."""
        proc = self.procs.start(
            self.in_ns(self.cloud, [sys.executable, TRAFFIC, "serve", "--host", "0.0.0.0", "--port", str(PORT)])
        )
        assert proc.next_line(30) == "ready", proc.tail()
        return proc

    def client(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """Run a traffic client in the edge namespace and return its JSON result."""
        proc = self.procs.start(self.in_ns(self.edge, [sys.executable, TRAFFIC, *args]))
        result = proc.next_json(timeout)
        assert proc.wait(10) == 0, proc.tail()
        return result

    def shaper(self, *args: str, inside: bool = False, env: dict[str, str] | None = None) -> Proc:
        """``scout shape`` on the edge veth, from outside (``--netns``) or inside the namespace; waits until ready."""
        cli = [sys.executable, "-m", "scout_cli.main", "shape", "--iface", self.edge_if, "--metrics-port", "0", *args]
        argv = self.in_ns(self.edge, cli) if inside else [*cli, "--netns", self.edge]
        proc = self.procs.start(argv, env={**clean_env(), **(env or {})})
        proc.next_json(60, event="ready")
        return proc


@contextlib.contextmanager
def netns_link() -> Iterator[Link]:
    """A fresh edge/cloud namespace pair with a veth between them (see the module docstring)."""
    n = next(_counter)
    link = Link(f"{NS_PREFIX}-{n}e", f"{NS_PREFIX}-{n}c", f"ve{RUN_TAG}{n}"[:15], f"vc{RUN_TAG}{n}"[:15])
    made: list[str] = []
    try:
        for ns in (link.edge, link.cloud):
            run(["ip", "netns", "add", ns])
            made.append(ns)
        peer = ("peer", "name", link.cloud_if, "netns", link.cloud)
        run(["ip", "link", "add", link.edge_if, "netns", link.edge, "type", "veth", *peer])
        for ns, iface, addrs in (
            (link.edge, link.edge_if, [EDGE_IP]),
            (link.cloud, link.cloud_if, [CLOUD_IP, CLOUD_IP2]),
        ):
            for addr in addrs:
                run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", iface])
            run(["ip", "-n", ns, "link", "set", iface, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        yield link
    finally:
        link.procs.stop_all()
        for ns in made:
            run(["ip", "netns", "del", ns], check=False)
        problems = [f"namespace {ns}" for ns in made if ns in namespaces()]
        problems += [f"process {p.pid} ({' '.join(p.argv[:6])})" for p in link.procs.started if alive(p.pid)]
        root_links = run(["ip", "-o", "link", "show"]).stdout
        problems += [
            f"interface {i} in the root namespace"
            for i in (link.edge_if, link.cloud_if)
            if f" {i}@" in root_links or f" {i}:" in root_links
        ]
        if problems:
            raise LeftBehind("left behind: " + ", ".join(problems))


# ----------------------------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arrivals:
    """A sink's arrival curve: cumulative bytes received by each (millisecond-resolution) time."""

    t: np.ndarray
    cum: np.ndarray

    @classmethod
    def of(cls, sink: dict[str, Any]) -> Arrivals:
        assert sink["kind"] == "sink" and sink["t"], "the sink received nothing"
        return cls(np.asarray(sink["t"], dtype=np.float64), np.asarray(sink["cum"], dtype=np.float64))

    def bytes_by(self, when: float | np.ndarray) -> np.ndarray:
        return np.interp(when, self.t, self.cum, left=0.0)

    def goodput_bps(self, start: float, end: float) -> float:
        """Payload bit/s received in ``[start, end]``."""
        assert end > start
        return float((self.bytes_by(end) - self.bytes_by(start)) * 8 / (end - start))

    def steady_goodput_bps(self, warmup_s: float = 0.5) -> float:
        """Goodput from ``warmup_s`` after the first byte (slow start and the initial bucket excluded) to the
        last byte."""
        return self.goodput_bps(float(self.t[0]) + warmup_s, float(self.t[-1]))


def fetch(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET, 5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def gauge(metrics_text: str, name: str) -> float:
    """The value of a (single-series) gauge in a Prometheus exposition."""
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines() if line.startswith(name + "{")]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]
