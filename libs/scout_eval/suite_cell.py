"""The multi-device cell (Paper B §4): several devices' requests arrive at once on one shared uplink.

`allocate_equal`, `allocate_proportional` and `allocate_model_aware` (`scout.policy.allocator`) split the capacity;
a static cell uses a constant capacity (`run_cell_static`), a trace-driven cell (`run_cell_trace`) splits the rate a
probe saw in the last second and times each device's transfer on the actual trace at its fixed fraction of the link
(a static split: a device that finishes early does not hand its share to the others). The simulation suite
(`scout_eval.suite`) runs both over its model pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scout.channel.process import BandwidthProcess
from scout.policy.allocator import (
    Allocation,
    DeviceDemand,
    allocate_equal,
    allocate_model_aware,
    allocate_proportional,
)
from scout.policy.operating_points import OperatingPointTable
from scout.policy.planner import DEADLINE_SLACK_S, PlanRequest, StageTimes

__all__ = ["ALLOCATORS", "CellDevice", "allocation_rows", "run_cell_static", "run_cell_trace"]


@dataclass(frozen=True)
class CellDevice:
    """One device of the cell: its model pair's (restricted) table and stage times, and its request."""

    device_id: str
    pair: str
    table: OperatingPointTable
    stages: StageTimes
    context_tokens: int
    deadline_s: float
    extra_tokens: int = 0

    def demand(self, request_id: str = "") -> DeviceDemand:
        request = PlanRequest(
            context_tokens=self.context_tokens,
            deadline_s=self.deadline_s,
            model_pair=self.pair,
            request_id=request_id or self.device_id,
            extra_tokens=self.extra_tokens,
        )
        return DeviceDemand(self.device_id, request, self.table, self.stages)


ALLOCATORS: dict[str, Callable[[Sequence[DeviceDemand], float], Allocation]] = {
    "equal": allocate_equal,
    "proportional": allocate_proportional,
    "model-aware": allocate_model_aware,
}


def run_cell_static(devices: Sequence[CellDevice], capacity_bps: float) -> dict[str, Allocation]:
    """One round of simultaneous requests on a constant-capacity uplink, for each allocator."""
    demands = [d.demand() for d in devices]
    return {name: alloc(demands, capacity_bps) for name, alloc in ALLOCATORS.items()}


def _actual(
    device: CellDevice, plan: Any, share: float, est: float, t0: float, process: BandwidthProcess
) -> tuple[bool, float]:
    """Whether the device's plan finishes in time on the actual link at its fixed fraction of it, and its quality."""
    ms = device.stages.for_mode(plan.mode)
    n = device.context_tokens
    before, after = ms.before_transfer_s(n), ms.after_transfer_s(n)
    if plan.bytes == 0:
        done = before + after
    else:
        fraction = share / est if est > 0 else 0.0
        if fraction <= 0:
            return False, 0.0
        finish = process.transfer_finish_time(t0 + before, plan.bytes / fraction)
        done = finish - t0 + after
    met = done <= device.deadline_s + DEADLINE_SLACK_S
    return met, plan.expected_quality if met else 0.0


def run_cell_trace(
    devices: Sequence[CellDevice],
    process: BandwidthProcess,
    *,
    rounds: int,
    interval_s: float,
    probe_s: float = 1.0,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``rounds`` rounds, one every ``interval_s``: the cell splits the mean rate of the last ``probe_s`` (what it
    can know) among the devices, each allocator its way; each transfer is then timed on the actual trace at the
    device's fraction of the link. Per allocator: deadlines met and mean quality (miss = 0) over all device
    requests, with bootstrap CIs, and the points chosen."""
    from scout.stats import bootstrap_ci

    out: dict[str, dict[str, Any]] = {}
    per: dict[str, dict[str, list[float]]] = {a: {"met": [], "q": []} for a in ALLOCATORS}
    points: dict[str, Counter[str]] = {a: Counter() for a in ALLOCATORS}
    misses_by_pair: dict[str, Counter[str]] = {a: Counter() for a in ALLOCATORS}
    for k in range(rounds):
        t0 = interval_s * (k + 1)
        est = process.mean_rate(t0 - probe_s, t0)
        demands = [d.demand(f"{d.device_id}-r{k}") for d in devices]
        for name, alloc in ALLOCATORS.items():
            allocation = alloc(demands, est)
            for d, row in zip(devices, allocation.devices, strict=True):
                met, q = _actual(d, row.plan, row.share_bps, est, t0, process)
                per[name]["met"].append(float(met))
                per[name]["q"].append(q)
                points[name][row.plan.point] += 1
                if not met:
                    misses_by_pair[name][d.pair] += 1
    for name in ALLOCATORS:
        m = bootstrap_ci(per[name]["met"], n_boot=bootstrap, seed=seed)
        q = bootstrap_ci(per[name]["q"], n_boot=bootstrap, seed=seed)
        out[name] = {
            "requests": len(per[name]["met"]),
            "met_pct": 100 * m[0],
            "met_ci_pct": [100 * m[1], 100 * m[2]],
            "mean_quality": q[0],
            "mean_quality_ci": [q[1], q[2]],
            "points": dict(sorted(points[name].items())),
            "misses_by_pair": dict(sorted(misses_by_pair[name].items())),
        }
    return out


def allocation_rows(allocation: Allocation, devices: Sequence[CellDevice]) -> list[dict[str, Any]]:
    """One row per device of an allocation, as the suite's summary records it (rates in Mbit/s)."""
    return [
        {
            "device": row.device_id,
            "pair": d.pair,
            "context_tokens": d.context_tokens,
            "deadline_s": d.deadline_s,
            "share_mbps": row.share_bps / 1e6,
            "need_mbps": row.need_bps / 1e6 if math.isfinite(row.need_bps) else None,
            "point": row.plan.point,
            "bytes": row.plan.bytes,
            "feasible": row.plan.feasible,
            "quality": row.plan.expected_quality,
        }
        for row, d in zip(allocation.devices, devices, strict=True)
    ]
