"""A network lab for real tc shaping: namespaces joined by a veth, the processes started in them, tc's own view of
the qdiscs (configuration and counters), and the TCP traffic that crosses the link; the one copy that the shaping
tests (``tests/netns``) and ``scout bench shaping`` use.

`netns_link()` creates namespaces ``edge`` and ``cloud`` joined by a veth pair (edge 10.77.0.1, cloud 10.77.0.2
and .3), named with this run's tag and a counter so concurrent runs never collide. Every process on the link goes
through its `Processes`; on exit, whatever happened, they are stopped, the namespaces deleted (veths and qdiscs go
with them), and the clean-up verified: a leftover raises `LeftBehind`.

Why tc's counters: a rate measured on a shared machine depends on its load (a descheduled sender sends less), so
checks read what does not: the rate, bucket and queue tc holds, the bytes each qdisc passed, its overlimits (the
bucket ran dry: it throttled), and the bound on arrivals a token bucket guarantees (`max_dequeued_bytes`).

Run as a module in a namespace (``python -m scout_testbed.netlab …``) it is the traffic tool (plain sockets):

    serve --host H --port P     accept connections one after another; the first byte says what to do: S sink
                                (count bytes until EOF, answer one JSON line with the arrival curve at 1 ms
                                resolution), E echo; prints "ready", then one JSON line per finished connection
    send --host H --port P --seconds S [--bytes N] [--abort]
                                send as fast as possible for S seconds (or exactly N bytes) to a sink, half-close,
                                wait for the answer; prints {"sent", "t_first", "t_done", "elapsed_s"}; --abort
                                resets after S seconds instead (a slow link would take long to drain the buffers)
    ping --host H --port P --count N --size B       N echo round trips of B bytes; prints {"rtts_ms": [...]}
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import struct
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
from pydantic import BaseModel, ConfigDict

from scout.channel.traces import load_trace

RUN_TAG = f"{os.getpid() % 100_000:05d}{secrets.token_hex(2)}"
NS_PREFIX = f"sct{RUN_TAG}"
EDGE_IP, CLOUD_IP, CLOUD_IP2 = "10.77.0.1", "10.77.0.2", "10.77.0.3"
PORT = 5201
CHUNK = 64 * 1024
ALL_PIDS: list[int] = []  # every process this run started on any link (a test session checks them at its end)
PROBE_TBF = ("tbf", "rate", "1mbit", "burst", "5000", "limit", "10000")

_counter = itertools.count()


class LeftBehind(AssertionError):
    """Clean-up did not remove everything a link created."""


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


@cache
def netns_unavailable() -> str | None:
    """Why real shaping cannot run here, or None: root, iproute2, and a working ``ip netns add`` + veth + tbf,
    probed once with a throw-away namespace (the tests' skip reason and the benchmark's error)."""
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
    """This environment without SCOUT_* and OTEL_* variables (a developer's settings must not leak in)."""
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
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
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

    def events(self, kind: str) -> list[dict[str, Any]]:
        """The JSON lines printed so far whose ``event`` is ``kind``."""
        out = []
        for line in list(self.stdout):
            with contextlib.suppress(json.JSONDecodeError):
                obj = json.loads(line)
                if isinstance(obj, dict) and obj.get("event") == kind:
                    out.append(obj)
        return out

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
    """The processes of one link; `stop_all` ends each of them by its own pid."""

    started: list[Proc] = field(default_factory=list)

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(argv, env)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


# ----------------------------------------------------------------------------------------------------------------
# tc's view
# ----------------------------------------------------------------------------------------------------------------
class Qdisc(BaseModel):
    """One qdisc as ``tc -s -j qdisc show`` reports it: configuration (``options``) and counters since it was
    installed (``bytes``/``packets`` dequeued, ``overlimits``: times a packet had to wait for tokens)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: str
    handle: str
    parent: str | None = None
    options: dict[str, Any] = {}
    bytes: int = 0
    packets: int = 0
    drops: int = 0
    overlimits: int = 0
    requeues: int = 0


class U32Filter(BaseModel):
    """A u32 filter's match keys (``(offset, value, mask)`` in hex as tc prints them) and its class."""

    model_config = ConfigDict(frozen=True)

    flowid: str
    keys: tuple[tuple[int, str, str], ...]


def _u32_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook that keeps every ``match`` of a filter (tc repeats the key once per match)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key == "match":
            out.setdefault("matches", []).append(value)
        else:
            out[key] = value
    return out


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

    def qdiscs(self) -> list[Qdisc]:
        """The qdiscs on the edge veth, with their counters."""
        out = run(["tc", "-s", "-j", "-n", self.edge, "qdisc", "show", "dev", self.edge_if]).stdout
        return [Qdisc.model_validate(q) for q in json.loads(out or "[]")]

    def qdisc_kinds(self) -> list[str]:
        """Kinds of the qdiscs on the edge veth (``["noqueue"]`` when nobody shapes it)."""
        return [q.kind for q in self.qdiscs()]

    def qdisc(self, kind: str) -> Qdisc:
        """The one qdisc of ``kind`` on the edge veth (the tbf, root or leaf; the htb root)."""
        (found,) = [q for q in self.qdiscs() if q.kind == kind]
        return found

    def tbf_rate_bps(self) -> float:
        """The rate of the tbf on the edge veth, as the kernel reports it (bytes/s x 8)."""
        return float(self.qdisc("tbf").options["rate"]) * 8

    def u32_filters(self) -> list[U32Filter]:
        """The u32 filters on the edge veth's root (the per-destination classification)."""
        out = run(["tc", "-j", "-n", self.edge, "filter", "show", "dev", self.edge_if]).stdout
        found = []
        for entry in json.loads(out or "[]", object_pairs_hook=_u32_keys):
            opts = entry.get("options", {})
            if entry.get("kind") == "u32" and "flowid" in opts:
                keys = tuple((int(m["off"]), m["value"], m["mask"]) for m in opts.get("matches", []))
                found.append(U32Filter(flowid=opts["flowid"], keys=keys))
        return found

    def serve(self) -> Proc:
        """The traffic server in the cloud namespace, on every cloud address."""
        argv = [sys.executable, "-m", "scout_testbed.netlab", "serve", "--host", "0.0.0.0", "--port", str(PORT)]
        proc = self.procs.start(self.in_ns(self.cloud, argv))
        line = proc.next_line(30)
        if line != "ready":
            raise AssertionError(f"traffic server: {line!r}; stderr: {proc.tail()}")
        return proc

    def client(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """Run a traffic client in the edge namespace and return its JSON result."""
        proc = self.procs.start(self.in_ns(self.edge, [sys.executable, "-m", "scout_testbed.netlab", *args]))
        result = proc.next_json(timeout)
        if proc.wait(10) != 0:
            raise AssertionError(f"traffic client {args}: {proc.tail()}")
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
# arrivals, and what a token bucket allows
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arrivals:
    """A sink's arrival curve: cumulative payload bytes received by each (millisecond-resolution) time."""

    t: np.ndarray
    cum: np.ndarray

    @classmethod
    def of(cls, sink: dict[str, Any]) -> Arrivals:
        if sink.get("kind") != "sink" or not sink.get("t"):
            raise AssertionError(f"the sink received nothing: {str(sink)[:200]}")
        return cls(np.asarray(sink["t"], dtype=np.float64), np.asarray(sink["cum"], dtype=np.float64))

    def bytes_by(self, when: float | np.ndarray) -> np.ndarray:
        return np.interp(when, self.t, self.cum, left=0.0)

    def goodput_bps(self, start: float, end: float) -> float:
        """Payload bit/s received in ``[start, end]`` (a measurement for reports, never a test's pass mark)."""
        if not end > start:
            raise ValueError(f"empty window [{start}, {end}]")
        return float((self.bytes_by(end) - self.bytes_by(start)) * 8 / (end - start))

    def steady_goodput_bps(self, warmup_s: float = 0.5) -> float:
        """Goodput from ``warmup_s`` after the first byte (slow start and the initial bucket excluded) to the last."""
        return self.goodput_bps(float(self.t[0]) + warmup_s, float(self.t[-1]))


def max_dequeued_bytes(
    applied: Sequence[tuple[float, float]], burst_bytes: int, since: float, until: np.ndarray
) -> np.ndarray:
    """The most bytes a tbf can have sent between ``since`` and each of ``until`` (Unix seconds), whatever the
    machine's load: load only delays packets, it never lets a token bucket send more.

    ``applied`` is the shaper's ``(at, rate_bps)`` per applied rate, ``at`` taken once tc returned; the change it
    reports took effect after the previous one's ``at``, so between two ``at`` the rate is at most the larger of
    the two. The bucket starts full and every change refills it (tbf resets its tokens), so each change that may
    have happened by then adds one bucket. A payload-byte count (a sink's) is at most the bytes tbf sent (headers
    count there too), so ``Arrivals.cum <= max_dequeued_bytes(…, Arrivals.t)`` must hold for a shaped flow; the
    slack covers the sink's 1 ms timestamps and tc's whole-bytes-per-second rates.
    """
    at = np.asarray([a for a, _ in applied], dtype=np.float64)
    rates = np.asarray([r for _, r in applied], dtype=np.float64)
    if at.size == 0 or np.any(np.diff(at) < 0):
        raise ValueError("applied rates must be a non-empty list in time order")
    seg = np.maximum(rates[:-1], rates[1:])  # rate bound on [at[k-1], at[k]]
    knots = np.concatenate([[0.0], np.cumsum(seg * np.diff(at))]) / 8  # bytes allowed from at[0] to each at[k]

    def cum(t: np.ndarray) -> np.ndarray:
        inside = np.interp(t, at, knots)
        before = (t - at[0]) * rates[0] / 8
        after = knots[-1] + (t - at[-1]) * rates[-1] / 8
        return np.where(t < at[0], before, np.where(t > at[-1], after, inside))

    until = np.asarray(until, dtype=np.float64)
    changes = np.searchsorted(at[:-1], until, side="left")  # change k may have happened once at[k-1] passed
    by_rate = 1.001 * (cum(until) - cum(np.full_like(until, since))) + float(rates.max()) / 8 * 0.002
    return by_rate + burst_bytes * (1 + changes)


def scaled_trace(name: str, scale: float, path: Path) -> Path:
    """A copy of trace ``name`` with every rate times ``scale``, as a ``t_s,mbps`` CSV at ``path``: the packaged
    traces are 5G mmWave downlinks (up to 1.8 Gbit/s), which scaled to an uplink's tens of Mbit/s keep their
    shape and stay within what a veth on a small machine can carry."""
    trace = load_trace(name)
    rows = "".join(f"{i * trace.step_s:g},{r * scale / 1e6:.6g}\n" for i, r in enumerate(trace.rates_bps))
    path.write_text("t_s,mbps\n" + rows)
    return path


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
    if len(values) != 1:
        raise AssertionError(f"{name}: {values}")
    return values[0]


# ----------------------------------------------------------------------------------------------------------------
# the traffic tool (python -m scout_testbed.netlab …, inside a namespace)
# ----------------------------------------------------------------------------------------------------------------
def _recv_exact(conn: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = conn.recv(n - len(out))
        if not data:
            raise ConnectionError("peer closed early")
        out += data
    return bytes(out)


def _sink(conn: socket.socket) -> dict[str, object]:
    times: list[float] = []
    cum: list[int] = []
    total = 0
    buf = bytearray(CHUNK)
    reset = False
    while True:
        try:
            n = conn.recv_into(buf)
        except ConnectionResetError:  # a sender that aborts (send --abort) ends the measurement there
            reset = True
            break
        if not n:
            break
        now = round(time.time(), 3)
        total += n
        if times and times[-1] == now:
            cum[-1] = total
        else:
            times.append(now)
            cum.append(total)
    if not reset:
        conn.sendall(json.dumps({"bytes": total}).encode() + b"\n")
    return {"kind": "sink", "bytes": total, "reset": reset, "t": times, "cum": cum}


def _echo(conn: socket.socket) -> dict[str, object]:
    total = 0
    while data := conn.recv(CHUNK):
        conn.sendall(data)
        total += len(data)
    return {"kind": "echo", "bytes": total}


def serve_traffic(host: str, port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kind = _recv_exact(conn, 1)
            result = _sink(conn) if kind == b"S" else _echo(conn)
        print(json.dumps(result), flush=True)


def send_traffic(host: str, port: int, seconds: float, nbytes: int | None, abort: bool) -> None:
    conn = socket.create_connection((host, port), timeout=60)
    payload = b"\0" * CHUNK
    sent = 0
    t_first = time.time()
    conn.sendall(b"S")
    if nbytes is not None:
        while sent < nbytes:
            step = min(CHUNK, nbytes - sent)
            conn.sendall(payload[:step])
            sent += step
    else:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(payload)
            sent += CHUNK
    if abort:  # reset: what is still queued is dropped, and nobody waits for a slow link to drain it
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        print(json.dumps({"sent": sent, "t_first": t_first, "aborted": True}), flush=True)
        return
    conn.shutdown(socket.SHUT_WR)
    answer = b""
    while not answer.endswith(b"\n"):
        data = conn.recv(4096)
        if not data:
            break
        answer += data
    t_done = time.time()
    conn.close()
    received = json.loads(answer)["bytes"] if answer else -1
    result = {"sent": sent, "received": received, "t_first": t_first, "t_done": t_done, "elapsed_s": t_done - t_first}
    print(json.dumps(result), flush=True)


def ping(host: str, port: int, count: int, size: int) -> None:
    conn = socket.create_connection((host, port), timeout=30)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(b"E")
    message = b"p" * size
    rtts = []
    for _ in range(count):
        t0 = time.perf_counter()
        conn.sendall(message)
        _recv_exact(conn, size)
        rtts.append(1000 * (time.perf_counter() - t0))
        time.sleep(0.02)
    conn.close()
    print(json.dumps({"rtts_ms": rtts}), flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "send", "ping"):
        p = sub.add_parser(name)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        if name == "send":
            p.add_argument("--seconds", type=float, default=3.0)
            p.add_argument("--bytes", type=int, default=None)
            p.add_argument("--abort", action="store_true", help="reset the connection after --seconds")
        if name == "ping":
            p.add_argument("--count", type=int, default=10)
            p.add_argument("--size", type=int, default=100)
    a = parser.parse_args(argv)
    if a.cmd == "serve":
        serve_traffic(a.host, a.port)
    elif a.cmd == "send":
        send_traffic(a.host, a.port, a.seconds, a.bytes, a.abort)
    else:
        ping(a.host, a.port, a.count, a.size)


if __name__ == "__main__":
    main(sys.argv[1:])
