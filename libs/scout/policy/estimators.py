"""Bandwidth estimators: what the policy believes the uplink will deliver next, from what it has seen.

Why several: the estimate is what turns "fits the deadline" into a prediction, and estimators fail
differently. The last sample reacts at once but trusts every spike; an EWMA smooths but lags a drop; the
harmonic mean of the last k samples (the throughput predictor of ABR video players such as MPC/FESTIVE) is
dominated by the *small* samples, so one lucky burst cannot talk the planner into a large transfer; a low
quantile of the recent window is the most conservative and backs the robust planner.

All share one interface: ``update(t, rate_bps)`` with samples in time order, from two sources: the rate the
shaper reports as configured, and the goodput of finished transfers (`goodput_bps`); ``estimate()`` returns
bit/s (``prior_bps`` before the first sample). A zero sample is meaningful (an outage): the harmonic mean and
the low quantile then return 0, and the planner falls back to modes that need no uplink.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "ESTIMATORS",
    "EWMA",
    "BandwidthEstimator",
    "HarmonicMean",
    "LastSample",
    "LowQuantile",
    "goodput_bps",
    "make_estimator",
]


@runtime_checkable
class BandwidthEstimator(Protocol):
    """Feed samples with `update`, read the belief with `estimate` (bit/s)."""

    name: str

    def update(self, t: float, rate_bps: float) -> None: ...

    def estimate(self) -> float: ...


def goodput_bps(nbytes: float, seconds: float) -> float:
    """Measured goodput of a finished transfer, bit/s (the second kind of sample an estimator gets)."""
    if not seconds > 0:
        raise ValueError(f"a transfer's duration must be positive, got {seconds}")
    return 8.0 * float(nbytes) / float(seconds)


class _Base:
    """Sample validation and time ordering, shared by every estimator."""

    name = "base"

    def __init__(self, prior_bps: float = 0.0) -> None:
        if not (prior_bps >= 0 and math.isfinite(prior_bps)):
            raise ValueError(f"prior_bps must be finite and >= 0, got {prior_bps}")
        self.prior_bps = float(prior_bps)
        self.last_t = -math.inf
        self.count = 0

    def _accept(self, t: float, rate_bps: float) -> float:
        t, rate = float(t), float(rate_bps)
        if not math.isfinite(t) or t < self.last_t:
            raise ValueError(f"samples must come in time order with finite times: {t} after {self.last_t}")
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be finite and >= 0, got {rate_bps}")
        self.last_t = t
        self.count += 1
        return rate


class LastSample(_Base):
    """The most recent sample."""

    name = "last"

    def __init__(self, prior_bps: float = 0.0) -> None:
        super().__init__(prior_bps)
        self._last: float | None = None

    def update(self, t: float, rate_bps: float) -> None:
        self._last = self._accept(t, rate_bps)

    def estimate(self) -> float:
        return self.prior_bps if self._last is None else self._last


class EWMA(_Base):
    """Exponentially weighted moving average: ``e <- alpha * x + (1 - alpha) * e``; the first sample seeds it.

    With ``half_life_s`` set, the weight depends on the time since the previous sample,
    ``alpha = 1 - 2^(-dt / half_life_s)``, so irregular samples (transfers end whenever they end) are weighted
    by the time they represent rather than by their count.
    """

    name = "ewma"

    def __init__(self, alpha: float = 0.3, *, half_life_s: float | None = None, prior_bps: float = 0.0) -> None:
        super().__init__(prior_bps)
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if half_life_s is not None and not (half_life_s > 0 and math.isfinite(half_life_s)):
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        self.alpha = float(alpha)
        self.half_life_s = half_life_s
        self._value: float | None = None

    def update(self, t: float, rate_bps: float) -> None:
        prev_t = self.last_t
        x = self._accept(t, rate_bps)
        if self._value is None:
            self._value = x
            return
        a = self.alpha if self.half_life_s is None else 1.0 - 2.0 ** (-(t - prev_t) / self.half_life_s)
        self._value = a * x + (1.0 - a) * self._value

    def estimate(self) -> float:
        return self.prior_bps if self._value is None else self._value


class _Windowed(_Base):
    """An estimator over the last ``k`` samples only: old samples fall out of the window, so a link that changed
    is believed after ``k`` samples whatever came before."""

    def __init__(self, k: int, prior_bps: float = 0.0) -> None:
        super().__init__(prior_bps)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self._window: deque[float] = deque(maxlen=self.k)

    def update(self, t: float, rate_bps: float) -> None:
        self._window.append(self._accept(t, rate_bps))


class HarmonicMean(_Windowed):
    """Harmonic mean of the last ``k`` samples, ``k / sum(1 / x_i)``; 0 if any of them is 0."""

    name = "harmonic"

    def __init__(self, k: int = 5, prior_bps: float = 0.0) -> None:
        super().__init__(k, prior_bps)

    def estimate(self) -> float:
        if not self._window:
            return self.prior_bps
        if min(self._window) == 0.0:
            return 0.0
        return len(self._window) / sum(1.0 / x for x in self._window)


class LowQuantile(_Windowed):
    """The ``q`` quantile (linear interpolation, numpy's default) of the last ``k`` samples: a cautious estimate."""

    name = "quantile"

    def __init__(self, q: float = 0.1, k: int = 20, prior_bps: float = 0.0) -> None:
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}")
        super().__init__(k, prior_bps)
        self.q = float(q)

    def estimate(self) -> float:
        if not self._window:
            return self.prior_bps
        return float(np.quantile(np.fromiter(self._window, dtype=np.float64), self.q))


ESTIMATORS: dict[str, type[_Base]] = {
    "last": LastSample,
    "ewma": EWMA,
    "harmonic": HarmonicMean,
    "quantile": LowQuantile,
}


def make_estimator(spec: str, prior_bps: float = 0.0) -> BandwidthEstimator:
    """An estimator from a short spec: ``last``, ``ewma`` / ``ewma:0.3``, ``harmonic`` / ``harmonic:5``,
    ``quantile`` / ``quantile:0.1`` / ``quantile:0.1:20`` (the CLI and the simulator name estimators this way)."""
    name, *args = spec.split(":")
    try:
        if name == "last" and not args:
            return LastSample(prior_bps=prior_bps)
        if name == "ewma" and len(args) <= 1:
            return EWMA(*(float(a) for a in args), prior_bps=prior_bps)
        if name == "harmonic" and len(args) <= 1:
            return HarmonicMean(*(int(a) for a in args), prior_bps=prior_bps)
        if name == "quantile" and len(args) <= 2:
            q = float(args[0]) if args else 0.1
            k = int(args[1]) if len(args) > 1 else 20
            return LowQuantile(q, k, prior_bps=prior_bps)
    except ValueError as exc:
        raise ValueError(f"bad estimator spec {spec!r}: {exc}") from exc
    raise ValueError(f"unknown estimator spec {spec!r}; use one of last, ewma[:alpha], harmonic[:k], quantile[:q[:k]]")


class LinkBook:
    """Bandwidth estimators of the devices the policy has heard of (bounded, least recently updated dropped).

    The transport-policy service feeds it LinkState messages; it lives here because it is policy logic.
    """

    def __init__(self, estimator: str, prior_bps: float, max_devices: int) -> None:
        make_estimator(estimator, prior_bps)  # validate the spec now, not on the first sample
        self.spec = estimator
        self.prior_bps = prior_bps
        self.max_devices = max_devices
        self._devices: OrderedDict[str, BandwidthEstimator] = OrderedDict()
        self._shaper_rate: dict[str, float] = {}

    def update(self, device_id: str, rate_bps: float, source: str, now: float | None = None) -> None:
        """A sample for `device_id`: a configured rate (`source="shaper"`) or a measured goodput."""
        now = time.monotonic() if now is None else now
        est = self._devices.get(device_id)
        # A new configured rate from the shaper restarts the estimate; its periodic heartbeats repeating the same
        # rate must not, or they would throw away the goodput the quantizer measured since.
        changed = source == "shaper" and self._shaper_rate.get(device_id) != rate_bps
        if source == "shaper":
            self._shaper_rate[device_id] = rate_bps
        if est is None or changed:
            est = make_estimator(self.spec, rate_bps)
            self._devices[device_id] = est
        est.update(now, rate_bps)
        self._devices.move_to_end(device_id)
        while len(self._devices) > self.max_devices:
            dropped, _ = self._devices.popitem(last=False)
            self._shaper_rate.pop(dropped, None)

    def bandwidth_bps(self, device_id: str) -> float:
        est = self._devices.get(device_id)
        return self.prior_bps if est is None else est.estimate()

    def __len__(self) -> int:
        return len(self._devices)
