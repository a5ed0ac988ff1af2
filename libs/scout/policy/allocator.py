"""Multi-device allocation: several devices share one uplink (one cell); who gets how much, sending what.

The study's observation (Paper B §4): with an equal split, devices whose KV is large cannot finish, while a
split that knows the models (more bandwidth to large-KV devices, Scout for the others) meets every deadline.
Three allocators, all over a static split of a capacity ``C`` (bit/s) for one round of simultaneous requests:

* `allocate_equal`: ``C / D`` each; each device then plans alone at its share (`planner.plan`).
* `allocate_proportional`: shares proportional to each device's full (bf16) KV size for its context; each
  device then plans alone.
* `allocate_model_aware`: shares and modes chosen jointly to maximise the number of deadlines met, then the
  sum of relative qualities of the devices that meet them, then to use the least bandwidth.

Model-aware algorithm. For device ``i`` and operating point ``j``, the smallest constant rate that meets the
deadline is ``r_ij = 8 b_ij / (deadline_i - compute_ij)`` (`planner.min_rate_bps`; 0 for points that send
nothing and whose compute fits; infinite when compute alone misses). Choosing point ``j`` for device ``i``
costs ``r_ij`` of the capacity and earns the value ``(1, q_ij)``; "miss" costs 0 and earns ``(0, 0)``. This
is a multiple-choice knapsack with lexicographic values, solved exactly by dynamic programming over devices
on a Pareto frontier of partial states ``(bandwidth used, value)``: after each device, a state is dropped
when another uses no more bandwidth and has at least its value. Dropping is safe because values add and the
lexicographic order is compatible with addition: any completion of a dominated state is also a completion of
its dominator, feasible and at least as good. So the last frontier holds an optimum (tested against brute
force). Cost: ``O(D * F * m * log(F * m))`` for ``D`` devices, ``m`` options each and a frontier of at most
``F`` states; ``F`` is bounded by the number of distinct values and, in the worst case, by
``prod(m_i + 1)`` (the problem is NP-hard in general); ``max_frontier`` caps it by merging states into
bandwidth buckets of ``C / max_frontier`` (keeping each bucket's best value), after which the result is
marked ``exact=False``. Realistic cells (tens of devices, about ten points each) stay far below the cap.

Bandwidth left over after the chosen needs is split among the devices that meet their deadline by
transferring, in proportion to their bytes (a margin against estimation error; equally among all devices if
none transfers). A device that cannot meet its deadline gets no share beyond that, and its plan falls back to
scout or local, as `planner.plan` does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from scout.policy.operating_points import OperatingPoint, OperatingPointTable
from scout.policy.planner import Plan, PlanRequest, StageTimes, min_rate_bps, plan, plan_static

__all__ = [
    "Allocation",
    "DeviceAllocation",
    "DeviceDemand",
    "allocate_brute_force",
    "allocate_equal",
    "allocate_model_aware",
    "allocate_proportional",
]

_CAPACITY_RTOL = 1e-12


@dataclass(frozen=True)
class DeviceDemand:
    """One device's request this round, with the table and stage times of its model pair."""

    device_id: str
    request: PlanRequest
    table: OperatingPointTable
    stages: StageTimes

    def points(self) -> list[OperatingPoint]:
        return self.table.for_pair(self.request.model_pair)


class DeviceAllocation(BaseModel):
    """A device's share of the uplink, the rate its plan needs, and the plan."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    device_id: str
    share_bps: float
    need_bps: float
    plan: Plan


class Allocation(BaseModel):
    """The outcome of one allocator for one round."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    schema_version: int = 1
    algorithm: str
    capacity_bps: float
    devices: list[DeviceAllocation]
    met: int
    total_quality: float
    exact: bool = True

    @property
    def met_fraction(self) -> float:
        return self.met / len(self.devices) if self.devices else 0.0


def _check(demands: Sequence[DeviceDemand], capacity_bps: float) -> None:
    if not demands:
        raise ValueError("no devices to allocate")
    if not (capacity_bps >= 0 and math.isfinite(capacity_bps)):
        raise ValueError(f"capacity must be finite and >= 0 bit/s, got {capacity_bps}")
    ids = [d.device_id for d in demands]
    if len(set(ids)) != len(ids):
        raise ValueError("device ids must be unique")


def _need_of(d: DeviceDemand, p: Plan) -> float:
    point = d.table.find(p.point, p.model_pair)
    return min_rate_bps(point, d.request, d.stages)


def _summarise(algorithm: str, capacity: float, rows: list[DeviceAllocation], exact: bool = True) -> Allocation:
    met = sum(r.plan.feasible for r in rows)
    quality = sum(r.plan.expected_quality for r in rows if r.plan.feasible)
    return Allocation(
        algorithm=algorithm, capacity_bps=capacity, devices=rows, met=met, total_quality=quality, exact=exact
    )


def _plan_at_shares(
    algorithm: str, demands: Sequence[DeviceDemand], shares: list[float], capacity: float
) -> Allocation:
    rows = []
    for d, share in zip(demands, shares, strict=True):
        p = plan(d.request, share, d.table, d.stages)
        rows.append(DeviceAllocation(device_id=d.device_id, share_bps=share, need_bps=_need_of(d, p), plan=p))
    return _summarise(algorithm, capacity, rows)


def allocate_equal(demands: Sequence[DeviceDemand], capacity_bps: float) -> Allocation:
    """``C / D`` to every device; each plans alone at its share."""
    _check(demands, capacity_bps)
    share = capacity_bps / len(demands)
    return _plan_at_shares("equal", demands, [share] * len(demands), capacity_bps)


def allocate_proportional(
    demands: Sequence[DeviceDemand], capacity_bps: float, *, size_mode: str = "full"
) -> Allocation:
    """Shares proportional to each device's KV bytes in ``size_mode`` (bf16 by default) for its context."""
    _check(demands, capacity_bps)
    sizes = [
        float(d.table.bytes_for(size_mode, d.request.context_tokens, 1.0, d.request.model_pair, d.request.extra_tokens))
        for d in demands
    ]
    total = sum(sizes)
    shares = [capacity_bps * s / total for s in sizes] if total > 0 else [capacity_bps / len(demands)] * len(demands)
    return _plan_at_shares(f"proportional:{size_mode}", demands, shares, capacity_bps)


@dataclass(frozen=True)
class _Option:
    point: OperatingPoint | None  # None = the device misses its deadline
    need: float
    met: int
    quality: float
    nbytes: int


def _options(d: DeviceDemand) -> list[_Option]:
    out = [_Option(None, 0.0, 0, 0.0, 0)]
    for p in d.points():
        need = min_rate_bps(p, d.request, d.stages)
        if math.isfinite(need):
            out.append(
                _Option(
                    p,
                    need,
                    1,
                    d.table.relative_quality(p),
                    p.bytes_for(d.request.context_tokens, d.request.extra_tokens),
                )
            )
    return out


@dataclass(frozen=True)
class _State:
    used: float
    met: int
    quality: float
    parent: int  # index in the previous frontier
    option: int  # index into the device's options


def _value(s: _State) -> tuple[int, float]:
    return (s.met, s.quality)


def _pareto(states: list[_State]) -> list[_State]:
    """Keep the states no other state dominates (no more bandwidth and at least the value)."""
    states.sort(key=lambda s: (s.used, -s.met, -s.quality))
    out: list[_State] = []
    best: tuple[int, float] | None = None
    for s in states:
        if best is None or _value(s) > best:
            out.append(s)
            best = _value(s)
    return out


def _bucket(states: list[_State], capacity: float, buckets: int) -> list[_State]:
    """Approximation when the frontier outgrows its cap: one state per bandwidth bucket, its best value
    (the bucket's representative keeps its true bandwidth, so the result stays feasible)."""
    width = capacity / buckets if capacity > 0 else 1.0
    keep: dict[int, _State] = {}
    for s in states:
        b = math.ceil(s.used / width)
        if b not in keep or _value(s) > _value(keep[b]):
            keep[b] = s
    return _pareto(list(keep.values()))


def _leftover_shares(needs: list[float], nbytes: list[int], met: list[bool], capacity: float) -> list[float]:
    left = max(0.0, capacity - sum(needs))
    weights = [float(b) if m and b > 0 else 0.0 for b, m in zip(nbytes, met, strict=True)]
    total = sum(weights)
    if total == 0:
        weights, total = [1.0] * len(needs), float(len(needs))
    return [n + left * w / total for n, w in zip(needs, weights, strict=True)]


def allocate_model_aware(
    demands: Sequence[DeviceDemand], capacity_bps: float, *, max_frontier: int = 20_000
) -> Allocation:
    """Joint shares and modes maximising (deadlines met, total relative quality); see the module docstring."""
    _check(demands, capacity_bps)
    if max_frontier < 1:
        raise ValueError("max_frontier must be >= 1")
    limit = capacity_bps * (1 + _CAPACITY_RTOL)
    options = [_options(d) for d in demands]
    layers: list[list[_State]] = []
    frontier = [_State(0.0, 0, 0.0, -1, -1)]
    exact = True
    for opts in options:
        nxt = [
            _State(s.used + o.need, s.met + o.met, s.quality + o.quality, si, oi)
            for si, s in enumerate(frontier)
            for oi, o in enumerate(opts)
            if s.used + o.need <= limit
        ]
        frontier = _pareto(nxt)
        if len(frontier) > max_frontier:
            frontier = _bucket(frontier, capacity_bps, max_frontier)
            exact = False
        layers.append(frontier)
    best = max(frontier, key=lambda s: (s.met, s.quality, -s.used))
    chosen: list[int] = [0] * len(demands)
    idx = frontier.index(best)
    for i in range(len(demands) - 1, -1, -1):
        state = layers[i][idx]
        chosen[i] = state.option
        idx = state.parent
    picks = [options[i][j] for i, j in enumerate(chosen)]
    shares = _leftover_shares(
        [o.need for o in picks], [o.nbytes for o in picks], [o.point is not None for o in picks], capacity_bps
    )
    rows = []
    for d, o, share in zip(demands, picks, shares, strict=True):
        if o.point is None:
            p = plan(d.request, share, d.table, d.stages)
            p = p.model_copy(update={"reason": f"model-aware: no capacity left to meet it; {p.reason}"})
            need = _need_of(d, p)
        else:
            p = plan_static(d.request, o.point.name, share, d.table, d.stages)
            reason = (
                f"model-aware: {o.point.name} at {share / 1e6:.3g} Mbit/s (needs {o.need / 1e6:.3g}); "
                f"expected {p.expected_time_s:.3f} s of {d.request.deadline_s:.3f} s"
            )
            p = p.model_copy(update={"feasible": True, "fallback": False, "reason": reason})
            need = o.need
        rows.append(DeviceAllocation(device_id=d.device_id, share_bps=share, need_bps=need, plan=p))
    return _summarise("model-aware", capacity_bps, rows, exact)


def allocate_brute_force(demands: Sequence[DeviceDemand], capacity_bps: float) -> tuple[int, float]:
    """Best (deadlines met, total relative quality) by enumerating every combination: ``prod(m_i + 1)`` work.

    The reference the model-aware allocator is tested against on small instances; not for production use.
    """
    _check(demands, capacity_bps)
    limit = capacity_bps * (1 + _CAPACITY_RTOL)
    best = (0, 0.0)
    for combo in itertools.product(*(_options(d) for d in demands)):
        if sum(o.need for o in combo) <= limit:
            value = (sum(o.met for o in combo), sum(o.quality for o in combo))
            best = max(best, value)
    return best
