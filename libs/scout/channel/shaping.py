"""What the shaper sidecar tells Linux traffic control: rates, token-bucket sizing, the tc command lines, and the
rate schedule of a (time-compressed) trace replay. Pure: nothing here runs a command or opens a socket.

Why these choices (DESIGN.md: the shaper emulates the uplink, the policy plans on the rate it reports):

* **tbf does the shaping, always.** A token bucket is the simplest shaper whose delivered rate is predictable:
  TCP goodput through it is the configured rate times the payload share of a full frame (1448 payload bytes of a
  1514-byte Ethernet frame with TCP timestamps: 95.6 %), which is the "about 96 %" measured here. tbf also
  segments GSO super-packets larger than its bucket, so it stays exact on veth/virtio links with offloads; an htb
  class shaping 64 KB GSO packets with a rate/HZ bucket is not (measured here: 0.45 Mbit/s through a class of
  10 Mbit/s).
* **Per-destination shaping is classification only.** With destinations, the root is an ``htb`` whose unclassified
  traffic goes straight out (``default 0``: htb's direct queue, unshaped); u32 filters send traffic to the cloud
  store to one class whose leaf is the same tbf. So only the uplink to the store is shaped, and both layouts
  deliver the same rate for the same settings.
* **Burst >= rate / HZ** (tc-tbf(8)): the bucket must hold what the link sends in one timer tick, or the qdisc
  cannot reach its rate when dequeues are tick-driven; never less than two full frames. HZ is a kernel build
  option (250 here; 100, 250 and 1000 are common), so the service reads it from the kernel config when it can
  and assumes 100 (the largest bucket) otherwise.
* **One bucket size for the whole run**, sized for the schedule's peak rate. tbf never sends a queued packet
  larger than its bucket, and a change does not look at what is queued: shrinking the bucket under a GSO packet
  that is already waiting stalls the link until the bucket grows again (measured here: a flow stopped dead
  after a change from 78.6 to 32.5 Mbit/s with rate/HZ buckets). The price of a constant bucket is a larger
  burst after an idle period at low rates (at most one tick of the peak rate).
* **Limit = burst + rate x queue time**: the tbf queue is the emulated radio buffer. 50 ms keeps TCP's pipe full
  on a near-zero-RTT link without the seconds of bufferbloat a 1000-packet FIFO gives at 10 Mbit/s; a floor of a
  few frames keeps very low rates (trace outages) from dropping every packet.
* **Changes happen in place** (``tc qdisc change``), never by deleting and re-adding, so queued packets survive a
  rate change. tbf refills its bucket on every change, so each change lets one extra bucket through: one tick of
  the peak rate (85 kB for a 169 Mbit/s trace peak at HZ 250, i.e. +3.4 Mbit/s over a 0.2 s interval of a 5x
  replay, +0.7 Mbit/s over a real-time 1 s step); unchanged rates are therefore not re-applied.
* **Trace replay** configures, for each update interval, the *mean* trace rate over that interval (what a shaper
  updating every ``interval`` must configure to deliver the trace's bits; `StepProcess.mean_rate`). A trace's
  zero-rate rows (outages) become ``min_rate_bps``: tbf has no rate 0, and a trickle keeps TCP alive as the
  radio's retransmissions would.
* **The delay relay's window** (no netem in this kernel) holds exactly what the link carries during the delay
  plus two read chunks: less would throttle the link below its rate (throughput <= window / delay), more would let
  the client park data in the relay beyond the delay, queueing of the relay's own.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scout.channel.process import StepProcess

__all__ = [
    "DEFAULT_HZ",
    "DEFAULT_QUEUE_S",
    "ETH_FRAME_BYTES",
    "SHAPED_CLASS",
    "Destination",
    "RateStep",
    "ShapingLayout",
    "TbfParams",
    "TcCommand",
    "expected_goodput_fraction",
    "format_rate",
    "parse_destination",
    "parse_rate",
    "parse_speed",
    "rate_schedule",
    "relay_window_bytes",
    "split_host_port",
    "tbf_params",
    "update_interval",
]

DEFAULT_HZ = 100
"""Assumed kernel HZ when the running kernel's is unknown: the smallest common value, so the largest bucket."""
DEFAULT_QUEUE_S = 0.05
"""Emulated radio buffer, in seconds at the configured rate."""
ETH_FRAME_BYTES = 1514
"""A full Ethernet frame as a qdisc counts it (1500-byte MTU + 14-byte header; no FCS, no preamble)."""
TCP_PAYLOAD_BYTES = 1448
"""TCP payload of a full frame with the timestamp option (1500 - 20 IP - 32 TCP)."""
MIN_RATE_BPS = 8.0
"""tc stores rates in bytes/s: anything below 8 bit/s would be rate 0, which tbf rejects."""
SHAPED_CLASS = "1:10"
"""The htb class (and its tbf leaf ``10:``) that traffic to the shaped destinations goes to."""
_CLASS_RATE = "100gbit"
"""The htb class's own rate: far above any uplink, so only its tbf leaf shapes."""
_CLASS_QUANTUM = "60000"
"""htb's default quantum (rate / r2q) would exceed 200 kB at a 100gbit class rate and make the kernel warn."""

_RATE_UNITS = {"": 1.0, "bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_RATE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*(/s)?\s*", re.IGNORECASE)
_BYTE_UNITS = ("bps", "kbps", "mbps", "gbps", "tbps")


# ----------------------------------------------------------------------------------------------------------------
# rates
# ----------------------------------------------------------------------------------------------------------------
def parse_rate(text: str | float | int) -> float:
    """A rate in bit/s from tc's bit units (``50mbit``, ``1.5gbit``, ``800kbit``, ``12000bit``) or a bare number
    of bit/s; units are decimal (1 mbit = 10^6 bit), as in tc and the trace files.

    tc's byte units (``mbps`` = megabytes per second) are refused rather than read: "50mbps" is meant as megabits
    as often as not, and an 8x error in an emulated uplink would go unnoticed.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _RATE_RE.fullmatch(str(text))
        unit = m.group(2).lower() if m else ""
        if m and unit in _BYTE_UNITS:
            raise ValueError(f"rate {text!r}: tc reads {unit!r} as bytes per second; write bit units (e.g. 50mbit)")
        if not m or unit not in _RATE_UNITS:
            raise ValueError(f"rate {text!r}: expected a number with bit, kbit, mbit or gbit (e.g. 50mbit)")
        value = float(m.group(1)) * _RATE_UNITS[unit]
    if not math.isfinite(value) or value < MIN_RATE_BPS:
        raise ValueError(f"rate {text!r} must be finite and at least {MIN_RATE_BPS:g} bit/s")
    return value


def format_rate(rate_bps: float) -> str:
    """A rate for people: ``50mbit``, ``12.5mbit``, ``800kbit`` (tc's units, up to 4 significant digits)."""
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if rate_bps >= scale:
            return f"{rate_bps / scale:.4g}{unit}"
    return f"{rate_bps:.4g}bit"


def parse_speed(text: str | float) -> float:
    """A replay speed-up: ``10``, ``10x`` or ``2.5x`` (trace seconds per real second)."""
    raw = str(text).strip().lower().removesuffix("x")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"speed {text!r}: expected a number such as 10 or 10x") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"speed {text!r} must be positive and finite")
    return value


def expected_goodput_fraction(mss: int = TCP_PAYLOAD_BYTES, frame: int = ETH_FRAME_BYTES) -> float:
    """Share of a shaped rate that bulk TCP delivers as payload (0.956 for full frames with timestamps)."""
    return mss / frame


# ----------------------------------------------------------------------------------------------------------------
# token bucket sizing
# ----------------------------------------------------------------------------------------------------------------
class TbfParams(BaseModel):
    """One tbf configuration: rate (bit/s), bucket and queue limit (bytes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_bps: float = Field(ge=MIN_RATE_BPS, allow_inf_nan=False)
    burst_bytes: int = Field(ge=1)
    limit_bytes: int = Field(ge=1)

    def tc_args(self) -> list[str]:
        """The ``tbf …`` tail of a tc command (rates as whole bit/s, sizes as bytes)."""
        return [
            "tbf",
            "rate",
            f"{round(self.rate_bps)}bit",
            "burst",
            str(self.burst_bytes),
            "limit",
            str(self.limit_bytes),
        ]


def tbf_params(
    rate_bps: float,
    *,
    peak_bps: float | None = None,
    hz: int = DEFAULT_HZ,
    queue_s: float = DEFAULT_QUEUE_S,
    frame_bytes: int = ETH_FRAME_BYTES,
) -> TbfParams:
    """Bucket and queue for ``rate_bps`` on a link whose schedule peaks at ``peak_bps`` (default: this rate; see
    the module docstring): burst = max(peak/HZ, 2 frames), limit = burst + max(rate x queue_s, 4 frames)."""
    if not (math.isfinite(rate_bps) and rate_bps >= MIN_RATE_BPS):
        raise ValueError(f"rate must be finite and at least {MIN_RATE_BPS:g} bit/s, got {rate_bps}")
    peak = rate_bps if peak_bps is None else peak_bps
    if not (math.isfinite(peak) and peak >= rate_bps):
        raise ValueError(f"the peak rate must be finite and at least the rate ({rate_bps}), got {peak}")
    if hz <= 0:
        raise ValueError(f"HZ must be positive, got {hz}")
    if not (math.isfinite(queue_s) and queue_s >= 0):
        raise ValueError(f"queue time must be finite and >= 0, got {queue_s}")
    if frame_bytes < 64:
        raise ValueError(f"frame size must be at least 64 bytes, got {frame_bytes}")
    burst = max(math.ceil(peak / 8.0 / hz), 2 * frame_bytes)
    queue = max(math.ceil(rate_bps / 8.0 * queue_s), 4 * frame_bytes)
    return TbfParams(rate_bps=rate_bps, burst_bytes=burst, limit_bytes=burst + queue)


# ----------------------------------------------------------------------------------------------------------------
# destinations
# ----------------------------------------------------------------------------------------------------------------
class Destination(BaseModel):
    """Traffic to shape: an address or prefix, optionally one TCP/UDP destination port."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = Field(default=None, ge=1, le=65535)

    @property
    def version(self) -> Literal[4, 6]:
        return 4 if isinstance(self.network, ipaddress.IPv4Network) else 6

    def __str__(self) -> str:
        net = str(self.network)
        if self.port is None:
            return net
        return f"{net}:{self.port}" if self.version == 4 else f"[{net}]:{self.port}"


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, a bare IPv6 address or prefix -> (host, port or None).

    Port 0 passes (a listening address may ask for any port); `Destination` refuses it.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty destination")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"destination {text!r}: expected [address]:port")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # no colon, or a bare IPv6 address/prefix (several colons)
        host, port_text = text, ""
    if not host:
        raise ValueError(f"destination {text!r} has no host")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"destination {text!r}: port must be 0-65535")
    return host, int(port_text)


def parse_destination(text: str) -> Destination:
    """An IP destination (``10.0.0.5``, ``10.0.0.0/24``, ``10.0.0.5:6379``, ``[fd00::5]:6379``, ``fd00::/64``).

    Host names are not resolved here (that is I/O); resolve them first and build `Destination` from the address.
    """
    host, port = split_host_port(text)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise ValueError(f"destination {text!r}: {host!r} is not an IP address or prefix") from None
    return Destination(network=network, port=port)


# ----------------------------------------------------------------------------------------------------------------
# tc command lines
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TcCommand:
    """One ``tc`` invocation; ``must_succeed=False`` for clean-up steps whose failure only means "nothing there"."""

    argv: tuple[str, ...]
    must_succeed: bool = True

    def __str__(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class ShapingLayout:
    """The qdiscs on one interface: a root tbf, or (with destinations) htb + u32 filters + a tbf leaf.

    ``netns`` runs every command in that named network namespace (``tc -netns NAME``): a shaper outside the
    namespace (a test harness, a host-level emulation) shapes an interface inside it.
    """

    iface: str
    destinations: tuple[Destination, ...] = ()
    netns: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", self.iface):
            raise ValueError(f"interface name {self.iface!r} is not a Linux interface name (1-15 characters)")
        if self.netns is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.netns):
            raise ValueError(f"network namespace name {self.netns!r} is not valid")

    @property
    def per_destination(self) -> bool:
        return bool(self.destinations)

    def _tc(self, *args: str, must_succeed: bool = True) -> TcCommand:
        prefix = ("tc", "-netns", self.netns) if self.netns else ("tc",)
        return TcCommand((*prefix, *args), must_succeed)

    def _tbf(self, verb: str, params: TbfParams) -> TcCommand:
        where = ("parent", SHAPED_CLASS, "handle", "10:") if self.per_destination else ("root", "handle", "1:")
        return self._tc("qdisc", verb, "dev", self.iface, *where, *params.tc_args())

    def setup(self, params: TbfParams) -> list[TcCommand]:
        """Take over the interface's egress: remove whatever root qdisc is there (a previous run that was killed
        leaves its own), then install this layout at ``params``."""
        cmds = [self._tc("qdisc", "del", "dev", self.iface, "root", must_succeed=False)]
        if not self.per_destination:
            return [*cmds, self._tbf("add", params)]
        cmds += [
            self._tc("qdisc", "add", "dev", self.iface, "root", "handle", "1:", "htb", "default", "0"),
            self._tc(
                "class",
                "add",
                "dev",
                self.iface,
                "parent",
                "1:",
                "classid",
                SHAPED_CLASS,
                "htb",
                "rate",
                _CLASS_RATE,
                "ceil",
                _CLASS_RATE,
                "quantum",
                _CLASS_QUANTUM,
            ),
            self._tbf("add", params),
        ]
        return cmds + [self._filter(d) for d in self.destinations]

    def _filter(self, dest: Destination) -> TcCommand:
        if dest.version == 4:
            proto, prio, key = "ip", "1", "ip"
        else:
            proto, prio, key = "ipv6", "2", "ip6"
        match = ["match", key, "dst", str(dest.network)]
        if dest.port is not None:
            match += ["match", key, "dport", str(dest.port), "0xffff"]
        head = ["filter", "add", "dev", self.iface, "parent", "1:", "protocol", proto, "prio", prio, "u32"]
        return self._tc(*head, *match, "flowid", SHAPED_CLASS)

    def change(self, params: TbfParams) -> list[TcCommand]:
        """Set a new rate in place (queued packets stay queued)."""
        return [self._tbf("change", params)]

    def teardown(self) -> list[TcCommand]:
        """Remove the layout: deleting the root qdisc deletes its classes, filters and leaves with it."""
        return [self._tc("qdisc", "del", "dev", self.iface, "root", must_succeed=False)]


# ----------------------------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RateStep:
    """From ``t_s`` seconds after the schedule starts, configure ``rate_bps``."""

    t_s: float
    rate_bps: float


def update_interval(step_s: float, speed: float, floor_s: float) -> float:
    """How often a replay updates tc: one trace step in real time, but no more often than ``floor_s`` (a tc call
    costs milliseconds and every tbf change lets a burst through)."""
    if not (step_s > 0 and speed > 0 and floor_s > 0):
        raise ValueError("step, speed and floor must be positive")
    return max(step_s / speed, floor_s)


def rate_schedule(
    process: StepProcess, interval_s: float, *, min_rate_bps: float, quantum_bps: float = 8.0
) -> Iterator[RateStep]:
    """The rates to configure every ``interval_s`` seconds: the process's mean over each interval, at least
    ``min_rate_bps``, rounded to ``quantum_bps`` (tc keeps bytes/s); only changes are yielded.

    A finite, non-looping process ends at its duration (the caller holds the last rate); a looping or endless
    one yields forever, so consume it lazily.
    """
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise ValueError(f"interval must be positive and finite, got {interval_s}")
    if not min_rate_bps >= MIN_RATE_BPS:
        raise ValueError(f"min_rate_bps must be at least {MIN_RATE_BPS:g} bit/s")
    end = math.inf if process.loop else process.duration_s
    last: float | None = None
    k = 0
    while True:
        t = k * interval_s
        if t >= end:
            return
        rate = process.mean_rate(t, min(t + interval_s, end))
        rate = max(min_rate_bps, round(rate / quantum_bps) * quantum_bps)
        if rate != last:
            yield RateStep(t, rate)
            last = rate
        k += 1


def relay_window_bytes(max_rate_bps: float, delay_s: float, chunk_bytes: int) -> int:
    """Bytes the delay relay may hold: the link's bandwidth-delay product at its highest rate plus two chunks
    (see the module docstring)."""
    if not (math.isfinite(max_rate_bps) and max_rate_bps > 0):
        raise ValueError(f"rate must be positive and finite, got {max_rate_bps}")
    if not (math.isfinite(delay_s) and delay_s >= 0):
        raise ValueError(f"delay must be finite and >= 0, got {delay_s}")
    if chunk_bytes <= 0:
        raise ValueError(f"chunk size must be positive, got {chunk_bytes}")
    return math.ceil(max_rate_bps / 8.0 * delay_s) + 2 * chunk_bytes
