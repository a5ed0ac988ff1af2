"""Shaper entry points: the privilege check, running tc, the link's current shaping, and where the rates come from.

The decisions (tbf sizing, the qdisc layout, the replay schedule) are `scout.channel.shaping`; this module only
runs them. tc is run as a subprocess (iproute2 is what every node and image has, and its error messages are the
ones operators know); a tc call that is cancelled is still waited for, so a shutdown can never race a half-applied
command and leave a qdisc behind.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import logging
import os
import re
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scout.channel.shaping import (
    DEFAULT_HZ,
    Destination,
    RateStep,
    ShapingLayout,
    TbfParams,
    TcCommand,
    parse_destination,
    rate_schedule,
    split_host_port,
    tbf_params,
    update_interval,
)
from scout.channel.traces import Trace, TraceReplay, load_trace
from scout_services.shaper.args import ShaperArgs

log = logging.getLogger("scout.shaper")

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
MAX_TRACE_DOWNLOAD_BYTES = 16 * 1024 * 1024
_PERMISSION_MARKERS = ("Operation not permitted", "Permission denied")


class ShaperError(Exception):
    """A condition the shaper cannot run under; its message is the one line the operator sees."""


# ----------------------------------------------------------------------------------------------------------------
# privileges and kernel facts
# ----------------------------------------------------------------------------------------------------------------
def effective_capabilities(status_path: Path = Path("/proc/self/status")) -> int:
    """This process's effective capability mask (``CapEff``); 0 if it cannot be read."""
    try:
        text = status_path.read_text(encoding="ascii")
    except OSError:
        return 0
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)\s*$", text, re.MULTILINE)
    return int(m.group(1), 16) if m else 0


def tc_gains_net_admin(status_path: Path = Path("/proc/self/status")) -> bool:
    """True when a non-root process can still shape: `tc` carries the NET_ADMIN file capability, NET_ADMIN is in
    this process's bounding set and privilege escalation is allowed (`NoNewPrivs: 0`), which is how the Helm chart
    runs the sidecar as a non-root user."""
    tc = shutil.which("tc")
    try:
        text = status_path.read_text(encoding="ascii")
        xattr = os.getxattr(os.path.realpath(tc), "security.capability") if tc else b""
    except OSError:
        return False
    bnd = re.search(r"^CapBnd:\s*([0-9a-fA-F]+)\s*$", text, re.MULTILINE)
    nnp = re.search(r"^NoNewPrivs:\s*(\d)\s*$", text, re.MULTILINE)
    if not bnd or not nnp or nnp.group(1) != "0" or not int(bnd.group(1), 16) >> CAP_NET_ADMIN & 1:
        return False
    # vfs_cap_data: magic_etc (le32), then permitted (le32 low word) ...: NET_ADMIN is bit 12 of the low word
    return len(xattr) >= 8 and int.from_bytes(xattr[4:8], "little") >> CAP_NET_ADMIN & 1 == 1


def needs_net_admin(iface: str) -> str:
    """The message for a shaper without NET_ADMIN (one line: it is all the operator sees)."""
    return (
        f"the shaper needs the NET_ADMIN capability to change the qdiscs of {iface}, and this process "
        f"(uid {os.geteuid()}) does not have it: run it as root, or add NET_ADMIN to the container's "
        "securityContext.capabilities.add"
    )


def check_privileges(args: ShaperArgs, caps: int | None = None) -> None:
    """Fail at start, with one clear line, instead of at the first tc call: no tc, no NET_ADMIN, or ``netns``
    without SYS_ADMIN (entering a named namespace needs it)."""
    if shutil.which("tc") is None:
        raise ShaperError("tc (iproute2) is not installed; the shaper needs it")
    caps = effective_capabilities() if caps is None else caps
    if not caps >> CAP_NET_ADMIN & 1 and not tc_gains_net_admin():
        raise ShaperError(needs_net_admin(args.iface))
    if args.netns is not None and not caps >> CAP_SYS_ADMIN & 1:
        raise ShaperError(f"entering network namespace {args.netns!r} (--netns) needs the SYS_ADMIN capability")


def kernel_hz(config: Path = Path("/proc/config.gz")) -> int:
    """The running kernel's CONFIG_HZ when the kernel exposes its configuration, else `DEFAULT_HZ` (the smallest
    common value, which sizes the largest bucket)."""
    try:
        with gzip.open(config, "rt", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("CONFIG_HZ="):
                    return int(line.split("=", 1)[1])
    except (OSError, ValueError, EOFError):
        pass
    return DEFAULT_HZ


# ----------------------------------------------------------------------------------------------------------------
# tc
# ----------------------------------------------------------------------------------------------------------------
class TcRunner:
    """Runs tc commands one at a time."""

    def __init__(self, iface: str) -> None:
        self.iface = iface
        self._lock = asyncio.Lock()

    async def run(self, cmd: TcCommand) -> bool:
        """Run one command; True if it succeeded. A failure of a ``must_succeed`` command raises `ShaperError`
        (NET_ADMIN missing, no such interface, or tc's own first line of complaint)."""
        async with self._lock:
            proc = await asyncio.create_subprocess_exec(
                *cmd.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            done = asyncio.ensure_future(proc.communicate())
            try:
                _, err = await asyncio.shield(done)
            except asyncio.CancelledError:
                await done  # let tc finish: a cancelled shutdown must not race a half-applied command
                raise
        if proc.returncode == 0:
            log.debug("tc ok: %s", cmd)
            return True
        message = (err or b"").decode("utf-8", "replace").strip()
        first = message.splitlines()[0] if message else f"exit status {proc.returncode}"
        if not cmd.must_succeed:
            log.debug("tc (allowed to fail): %s: %s", cmd, first)
            return False
        if any(marker in message for marker in _PERMISSION_MARKERS):
            raise ShaperError(needs_net_admin(self.iface))
        if "Cannot find device" in message:
            raise ShaperError(f"no interface {self.iface!r} to shape (tc: {first})")
        raise ShaperError(f"tc failed: {first} (command: {cmd})")


class LinkShaper:
    """The shaping of one interface: installed on the first rate, changed in place after, removed at the end."""

    def __init__(self, layout: ShapingLayout, runner: TcRunner, *, peak_bps: float, hz: int, queue_s: float) -> None:
        self.layout = layout
        self.runner = runner
        self.peak_bps = peak_bps
        """The schedule's highest rate: it sizes one bucket for the whole run (`scout.channel.shaping`)."""
        self.hz = hz
        self.queue_s = queue_s
        self.params: TbfParams | None = None
        self.installed = False

    def params_for(self, rate_bps: float) -> TbfParams:
        return tbf_params(rate_bps, peak_bps=max(self.peak_bps, rate_bps), hz=self.hz, queue_s=self.queue_s)

    async def apply(self, rate_bps: float) -> TbfParams:
        """Configure ``rate_bps`` (installing the layout the first time)."""
        params = self.params_for(rate_bps)
        cmds = self.layout.change(params) if self.installed else self.layout.setup(params)
        if not self.installed:
            # From here on, whatever happens, the teardown must run: a setup can fail half-way.
            self.installed = True
        for cmd in cmds:
            await self.runner.run(cmd)
        self.params = params
        return params

    async def remove(self) -> None:
        """Delete the layout (and with it every class, filter and leaf); a no-op if it was never installed."""
        if not self.installed:
            return
        for cmd in self.layout.teardown():
            await self.runner.run(cmd)
        self.installed = False
        self.params = None


# ----------------------------------------------------------------------------------------------------------------
# where the rates come from
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RateSource:
    """The schedule to play: the first step, the rest (lazily; endless for a looped trace), and facts about it."""

    first: RateStep
    rest: Iterator[RateStep]
    max_rate_bps: float
    description: str
    end_s: float | None
    """When a non-looping replay ends (seconds after the start; the last rate is then held); None: never."""


def fetch_trace(url: str, folder: Path) -> Path:
    """Download a ``t_s,mbps`` CSV (at most 16 MiB) into ``folder``; the file keeps the URL's name."""
    name = Path(urllib.parse.urlsplit(url).path).name or "trace.csv"
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name.removesuffix(".csv")) or "trace"
    path = folder / f"{stem}.csv"
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            data = response.read(MAX_TRACE_DOWNLOAD_BYTES + 1)
    except OSError as e:
        raise ShaperError(f"cannot download trace {url}: {e}") from None
    if len(data) > MAX_TRACE_DOWNLOAD_BYTES:
        raise ShaperError(f"trace {url} is larger than {MAX_TRACE_DOWNLOAD_BYTES} bytes")
    path.write_bytes(data)
    return path


def read_trace(spec: str) -> Trace:
    """A trace by name (shared traces folder), file path, or http(s) URL."""
    try:
        if urllib.parse.urlsplit(spec).scheme in ("http", "https"):
            with tempfile.TemporaryDirectory(prefix="scout-trace-") as tmp:
                return load_trace(fetch_trace(spec, Path(tmp)))
        return load_trace(spec)
    except (FileNotFoundError, ValueError) as e:
        raise ShaperError(f"trace {spec!r}: {e}") from None


def rate_source(args: ShaperArgs) -> RateSource:
    """The fixed rate, or the trace replay's schedule (time-compressed by ``speed``, from ``offset_s``)."""
    fixed = args.rate_bps
    if fixed is not None:
        step = RateStep(0.0, fixed)
        return RateSource(step, iter(()), fixed, f"fixed {args.rate}", end_s=None)
    assert args.trace is not None
    trace = read_trace(args.trace)
    try:
        process = TraceReplay(trace, speed=args.speed, offset_s=args.offset_s, loop=args.loop)
    except ValueError as e:
        raise ShaperError(f"trace {trace.name}: {e}") from None
    interval = args.interval_s or update_interval(trace.step_s, args.speed, args.min_interval_s)
    steps = rate_schedule(process, interval, min_rate_bps=args.min_rate_bps)
    first = next(steps)
    peak = max(float(trace.rates_bps.max()), args.min_rate_bps)
    what = f"trace {trace.name} at {args.speed:g}x from {args.offset_s:g} s, every {interval:g} s"
    end = None if args.loop else process.duration_s
    return RateSource(first, steps, peak, what + (" (looped)" if args.loop else ""), end_s=end)


def resolve_destinations(specs: list[str]) -> tuple[Destination, ...]:
    """`Destination` per address of each ``host[:port]`` (a host name may resolve to several addresses)."""
    out: list[Destination] = []
    for spec in specs:
        try:
            out.append(parse_destination(spec))
            continue
        except ValueError:
            pass
        host, port = split_host_port(spec)
        if port == 0:
            raise ShaperError(f"destination {spec!r}: port 0 is not a destination port")
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as e:
            raise ShaperError(f"cannot resolve destination {spec!r}: {e}") from None
        for address in sorted({str(info[4][0]) for info in infos}):
            out.append(Destination(network=ipaddress.ip_network(address), port=port or None))
    return tuple(dict.fromkeys(out))


def layout_for(args: ShaperArgs) -> ShapingLayout:
    try:
        return ShapingLayout(args.iface, resolve_destinations(args.destinations), args.netns)
    except ValueError as e:
        raise ShaperError(str(e)) from None


async def close_quietly(what: str, closer: Awaitable[object]) -> None:
    """Await ``closer``, logging instead of raising: one failed shutdown step must not skip the next ones."""
    try:
        await closer
    except Exception as e:
        log.warning("shutdown: %s failed: %s: %s", what, type(e).__name__, e)
