"""Settings of the shaper sidecar (``SCOUT_SHAPER_*``); NATS URL, namespace and the metrics port come from
`scout_runtime.settings.Settings`. ``scout shape`` fills the same model from its options."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scout.channel.shaping import DEFAULT_QUEUE_S, parse_rate, parse_speed, split_host_port
from scout_runtime.subjects import validate_device_id


class ShaperArgs(BaseSettings):
    """What to shape and how. Exactly one of ``rate`` (fixed) and ``trace`` (replayed)."""

    model_config = SettingsConfigDict(env_prefix="SCOUT_SHAPER_", extra="ignore")

    iface: str = "eth0"
    """The interface whose egress is shaped (a pod's ``eth0``; a veth in tests)."""
    netns: str | None = None
    """Run tc in this named network namespace (``tc -netns``): the shaper itself stays outside (tests, a host)."""
    rate: str | None = None
    """A fixed rate in tc bit units (``50mbit``)."""
    trace: str | None = None
    """A trace to replay: a name in the shared traces folder, a ``t_s,mbps`` CSV file, or an http(s) URL of one."""
    speed: float = 1.0
    """Replay speed-up (``10`` or ``10x``: ten trace seconds per second)."""
    offset_s: float = Field(default=0.0, ge=0)
    """Where in the trace the replay starts, in trace seconds."""
    loop: bool = True
    """Repeat the trace; without, the last rate is held once the trace ends."""
    interval_s: float | None = Field(default=None, gt=0)
    """How often a replay updates tc (default: one trace step in real time, but at least ``min_interval_s``)."""
    min_interval_s: float = Field(default=0.1, gt=0)
    min_rate: str = "10kbit"
    """The rate configured for a trace's zero-rate rows (tbf cannot shape to 0)."""
    dst: str = ""
    """Shape only traffic to these destinations (comma-separated ``IP``, ``IP/prefix``, ``host``, each with an
    optional ``:port``; host names are resolved at start). Empty: all egress traffic is shaped."""
    delay_ms: float = Field(default=0.0, ge=0, le=60_000)
    """One-way delay added to the uplink by the relay (needs ``relay_target``)."""
    relay_listen: str = "127.0.0.1:0"
    """Where the relay listens (``host:port``; port 0 picks one and reports it in the ready line)."""
    relay_target: str | None = None
    """Where the relay forwards to (``host:port``, e.g. the cloud store); without it there is no relay."""
    device_id: str = "edge"
    """The device whose link this is: the ``scout.v1.link.<device_id>`` subject and the gauge's label."""
    publish: bool = True
    """Publish `LinkState` on the bus at ``SCOUT_NATS_URL`` (``scout shape`` publishes only with ``--nats``)."""
    publish_interval_s: float = Field(default=10.0, ge=0)
    """Re-announce the current rate this often, so a policy started later learns it (0: only on changes)."""
    hz: int | None = Field(default=None, ge=1, le=100_000)
    """Kernel HZ for the bucket size (default: from /proc/config.gz, else 100)."""
    queue_ms: float = Field(default=DEFAULT_QUEUE_S * 1000, ge=0, le=10_000)
    """The emulated radio buffer (tbf queue), in milliseconds at the configured rate."""

    @field_validator("speed", mode="before")
    @classmethod
    def _speed(cls, value: Any) -> float:
        return parse_speed(value)

    @field_validator("rate", "min_rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @field_validator("device_id")
    @classmethod
    def _device(cls, value: str) -> str:
        return validate_device_id(value)

    @field_validator("relay_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if split_host_port(value)[1] is None:
            raise ValueError(f"{value!r} needs a port (host:port; 0 picks one)")
        return value

    @field_validator("relay_target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None and not split_host_port(value)[1]:
            raise ValueError(f"{value!r} needs a port 1-65535 (host:port)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ShaperArgs:
        if (self.rate is None) == (self.trace is None):
            raise ValueError("give exactly one of a rate (e.g. 50mbit) and a trace")
        if self.delay_ms > 0 and self.relay_target is None:
            raise ValueError("a delay needs the relay: give relay_target (host:port of the service to reach)")
        if self.relay_target is not None and self.netns is not None:
            raise ValueError("the relay must run in the shaped namespace: run the shaper there instead of --netns")
        return self

    @property
    def rate_bps(self) -> float | None:
        return None if self.rate is None else parse_rate(self.rate)

    @property
    def min_rate_bps(self) -> float:
        return parse_rate(self.min_rate)

    @property
    def destinations(self) -> list[str]:
        return [d.strip() for d in self.dst.split(",") if d.strip()]
