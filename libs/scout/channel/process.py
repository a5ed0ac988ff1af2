"""Bandwidth processes: the uplink rate as a function of time, and what it implies for a transfer's finish time.

Why this module exists: a deadline is only honest if the transfer time is computed on the bandwidth the
transfer actually sees. With a varying rate B(t), a transfer of ``nbytes`` started at ``t0`` finishes at the
smallest ``t`` with ``integral_{t0}^{t} B(s) ds >= 8 * nbytes``, not at ``t0 + 8 * nbytes / B(t0)``. Every
process here (Markov chain, measured-trace replay) is piecewise constant, so that integral is a sum of
rectangles and its inverse is exact: no time stepping, no tolerance.

`BandwidthProcess` is the protocol the policy code depends on; `StepProcess` implements it for any step
function (finite, looped, or grown on demand by a subclass such as the Markov chain).

Conventions: times are seconds (``t >= 0``), rates bit/s, sizes bytes. A finite, non-looping process has rate 0
after its end (nothing was measured there), so a transfer that cannot finish before the end never finishes:
`transfer_finish_time` returns ``math.inf``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["BandwidthProcess", "StepProcess"]


@runtime_checkable
class BandwidthProcess(Protocol):
    """What the planner, the allocator and the simulator need to know about a link."""

    def rate_at(self, t: float) -> float:
        """Rate in bit/s at time ``t`` (seconds)."""
        ...

    def mean_rate(self, t0: float, t1: float) -> float:
        """Time-averaged rate over ``[t0, t1]`` in bit/s (the integral divided by ``t1 - t0``)."""
        ...

    def transfer_finish_time(self, t0: float, nbytes: float) -> float:
        """Time at which ``nbytes`` started at ``t0`` are through; ``math.inf`` if that never happens."""
        ...


class StepProcess:
    """A piecewise-constant rate: ``rates_bps[i]`` holds on ``[starts_s[i], starts_s[i+1])``, the last piece until
    ``end_s``.

    ``loop=True`` repeats the pattern with period ``end_s`` (as mahimahi's mm-link does with its traces).
    Otherwise the rate is 0 from ``end_s`` on. Subclasses that generate the pattern lazily (an endless Markov
    chain) override `_grow` to append pieces; the base class then calls it whenever a query reaches past the
    pieces generated so far.

    Integration uses a cumulative-bits array (``_cum[i]`` = bits delivered in ``[0, starts[i])``), so
    `bits_until` is one binary search and `transfer_finish_time` is one more binary search on ``_cum``.
    """

    def __init__(
        self,
        starts_s: np.ndarray | list[float],
        rates_bps: np.ndarray | list[float],
        end_s: float,
        *,
        loop: bool = False,
    ) -> None:
        starts = np.asarray(starts_s, dtype=np.float64).reshape(-1)
        rates = np.asarray(rates_bps, dtype=np.float64).reshape(-1)
        if starts.size == 0 or starts.size != rates.size:
            raise ValueError(f"need the same, non-zero number of starts and rates, got {starts.size}/{rates.size}")
        if starts[0] != 0.0:
            raise ValueError(f"the first piece must start at 0, got {starts[0]}")
        if not np.all(np.isfinite(starts)) or np.any(np.diff(starts) <= 0):
            raise ValueError("piece starts must be finite and strictly increasing")
        if not np.all(np.isfinite(rates)) or np.any(rates < 0):
            raise ValueError("rates must be finite and non-negative")
        if not math.isfinite(end_s) or end_s <= starts[-1]:
            raise ValueError(f"end_s must be finite and after the last start ({starts[-1]}), got {end_s}")
        self.loop = bool(loop)
        self._starts = starts
        self._rates = rates
        self._end = float(end_s)
        self._cum = self._cumulative(starts, rates, self._end)

    # ------------------------------------------------------------------------------------------------------------
    # hooks and properties
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _cumulative(starts: np.ndarray, rates: np.ndarray, end: float) -> np.ndarray:
        widths = np.diff(np.append(starts, end))
        return np.concatenate(([0.0], np.cumsum(rates * widths)))

    def _grow(self) -> bool:
        """Append pieces after ``_end``; return False when the process is finite (the default)."""
        return False

    def _append(self, starts: np.ndarray, rates: np.ndarray, end: float) -> None:
        """For subclasses: append pieces (``starts[0]`` must equal the current end)."""
        if starts.size == 0:
            return
        if starts[0] != self._end or end <= starts[-1]:
            raise ValueError("appended pieces must continue exactly at the current end")
        widths = np.diff(np.append(starts, end))
        tail = self._cum[-1] + np.cumsum(rates * widths)
        self._starts = np.concatenate((self._starts, starts))
        self._rates = np.concatenate((self._rates, rates))
        self._cum = np.concatenate((self._cum, tail))
        self._end = float(end)

    @property
    def end_s(self) -> float:
        """End of the pieces known so far (the period when looping)."""
        return self._end

    @property
    def duration_s(self) -> float:
        """Length of the pattern: ``end_s`` for a finite process, ``math.inf`` for one that grows on demand."""
        return self._end if type(self)._grow is StepProcess._grow else math.inf

    @property
    def period_bits(self) -> float:
        """Bits one pass over the known pieces delivers."""
        return float(self._cum[-1])

    def _cover(self, t: float) -> bool:
        """Grow until ``t`` lies inside the known pieces; False if the process cannot grow that far."""
        while t >= self._end:
            if not self._grow():
                return False
        return True

    # ------------------------------------------------------------------------------------------------------------
    # queries
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_t(t: float, what: str = "t") -> float:
        t = float(t)
        if not t >= 0.0 or math.isinf(t):
            raise ValueError(f"{what} must be a finite time >= 0, got {t}")
        return t

    def _index(self, x: float) -> int:
        return int(np.searchsorted(self._starts, x, side="right")) - 1

    def rate_at(self, t: float) -> float:
        """Rate in bit/s at ``t``; 0 after the end of a finite, non-looping process."""
        t = self._check_t(t)
        if self.loop:
            t = math.fmod(t, self._end)
        elif not self._cover(t):
            return 0.0
        return float(self._rates[self._index(t)])

    def _bits_in(self, x: float) -> float:
        """Bits in ``[0, x)`` for ``0 <= x <= _end``."""
        if x >= self._end:
            return float(self._cum[-1])
        i = self._index(x)
        return float(self._cum[i] + self._rates[i] * (x - self._starts[i]))

    def bits_until(self, t: float) -> float:
        """Bits the link can deliver in ``[0, t)``."""
        t = self._check_t(t)
        if self.loop:
            q = math.floor(t / self._end)
            return q * float(self._cum[-1]) + self._bits_in(t - q * self._end)
        self._cover(t)
        return self._bits_in(t)

    def mean_rate(self, t0: float, t1: float) -> float:
        """Integral average over ``[t0, t1]``; the rate at ``t0`` when the interval is empty."""
        t0, t1 = self._check_t(t0, "t0"), self._check_t(t1, "t1")
        if t1 < t0:
            raise ValueError(f"t1 must not precede t0, got [{t0}, {t1}]")
        if t1 == t0:
            return self.rate_at(t0)
        return (self.bits_until(t1) - self.bits_until(t0)) / (t1 - t0)

    def _time_in(self, x: float) -> float:
        """Smallest ``t`` in ``[0, _end]`` with ``_bits_in(t) >= x``, for ``0 < x <= _cum[-1]``."""
        i = int(np.searchsorted(self._cum, x, side="left")) - 1
        i = min(max(i, 0), self._rates.size - 1)
        piece_end = self._starts[i + 1] if i + 1 < self._starts.size else self._end
        t = self._starts[i] + (x - self._cum[i]) / self._rates[i]
        return float(min(t, piece_end))

    def time_of_bits(self, target_bits: float) -> float:
        """Smallest ``t`` with ``bits_until(t) >= target_bits``; ``math.inf`` if the link never delivers that."""
        if target_bits <= 0:
            return 0.0
        if self.loop:
            period = float(self._cum[-1])
            if period <= 0:
                return math.inf
            q = math.floor(target_bits / period)
            rem = target_bits - q * period
            if rem <= 0:
                q, rem = q - 1, period
            return q * self._end + self._time_in(rem)
        while self._cum[-1] < target_bits:
            if not self._grow():
                return math.inf
        return self._time_in(target_bits)

    def transfer_finish_time(self, t0: float, nbytes: float) -> float:
        """When a transfer of ``nbytes`` started at ``t0`` completes (exact for the step function).

        Zero bytes finish at ``t0``. Returns ``math.inf`` when the remaining rate is 0 up to the end of a
        finite, non-looping process (or of a looping one whose pattern delivers nothing at all).
        """
        t0 = self._check_t(t0, "t0")
        nbytes = float(nbytes)
        if not nbytes >= 0 or math.isinf(nbytes):
            raise ValueError(f"nbytes must be finite and >= 0, got {nbytes}")
        if nbytes == 0:
            return t0
        finish = self.time_of_bits(self.bits_until(t0) + 8.0 * nbytes)
        return max(finish, t0)

    def segments(self, t0: float, t1: float) -> list[tuple[float, float, float]]:
        """The pieces ``(start, end, rate_bps)`` covering ``[t0, t1]`` in process time (for plots and shapers)."""
        t0, t1 = self._check_t(t0, "t0"), self._check_t(t1, "t1")
        if t1 < t0:
            raise ValueError(f"t1 must not precede t0, got [{t0}, {t1}]")
        out: list[tuple[float, float, float]] = []
        t = t0
        while t < t1:
            if self.loop:
                base = math.floor(t / self._end) * self._end
            else:
                base = 0.0
                if not self._cover(t):
                    out.append((t, t1, 0.0))
                    break
            local = t - base
            i = self._index(local)
            piece_end = base + (self._starts[i + 1] if i + 1 < self._starts.size else self._end)
            end = min(piece_end, t1)
            if end <= t:  # rounding at a piece boundary: step onto the next piece
                end = math.nextafter(t, math.inf)
            out.append((t, end, float(self._rates[i])))
            t = end
        return out

    def iter_samples(self, dt: float, t0: float = 0.0, t1: float | None = None) -> Iterator[tuple[float, float]]:
        """Yield ``(t, rate_bps)`` every ``dt`` seconds, the rate being the mean over ``[t, t + dt)``.

        The mean (not the instantaneous rate) is what a shaper that updates every ``dt`` must configure to
        deliver the same bits as the process. ``t1`` defaults to the end of a finite, non-looping process;
        a looping or endless one needs it.
        """
        if not dt > 0 or math.isinf(dt):
            raise ValueError(f"dt must be a positive, finite step, got {dt}")
        if t1 is None:
            if self.loop or math.isinf(self.duration_s):
                raise ValueError("t1 is required for a looping or endless process")
            t1 = self.duration_s
        k = 0
        while True:
            t = t0 + k * dt
            if t >= t1:
                return
            yield t, self.mean_rate(t, min(t + dt, t1))
            k += 1
