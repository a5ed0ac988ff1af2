"""The deadline planner: per request, the operating point of highest expected quality that finishes in time.

The rule is the study's (Paper B §3): estimate the bandwidth B, check for every mode whether
``prefill + score + encode + transfer + decode + generate`` fits the deadline, pick the feasible mode of
highest expected quality. What Scout adds:

* every stage is timed per mode and model pair (`StageTimes`, loaded from a bench JSON), as a fixed part plus
  a part per context token, so a 4K-token document is not planned with 1K-token timings;
* sizes come from the codec (`operating_points`), so "transfer" is ``8 * bytes / B`` for the bytes the codec
  will really write, and the transfer waits for bytes already queued on the uplink;
* ties in quality go to the point with fewer bytes (less exposure to a bandwidth drop), then the faster one;
* when nothing is feasible the plan still answers: scout (almost no uplink) if it can finish at all, else
  local (no uplink), and ``reason`` says so; ``feasible`` stays False so callers can count the miss;
* `plan_robust` plans against a low quantile of recent samples instead of a point estimate, and
  `plan_oracle` knows the future: it integrates the actual `BandwidthProcess` (`transfer_finish_time`), which
  is the upper bound any estimator-based planner is compared with.

A deadline counts as met when the expected time is at most the deadline plus `DEADLINE_SLACK_S` (1 ns), which
only absorbs binary round-off of sums of stage times: a deadline met exactly is met.

The request and the answer (`PlanRequest`, `Plan`) are defined in `scout.policy.plans` (shared with the bus
message) and re-exported here; the threshold rule and forced modes are in `scout.policy.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scout.channel.process import BandwidthProcess
from scout.policy.operating_points import OperatingPoint, OperatingPointTable
from scout.policy.plans import JsonDocument, Plan, PlanRequest

__all__ = [
    "DEADLINE_SLACK_S",
    "Candidate",
    "ModeStages",
    "Plan",
    "PlanRequest",
    "StageCost",
    "StageTimes",
    "evaluate",
    "min_rate_bps",
    "plan",
    "plan_oracle",
    "plan_robust",
    "plan_static",
]

DEADLINE_SLACK_S = 1e-9
FALLBACK_ORDER: tuple[str, ...] = ("scout", "local")


class StageCost(BaseModel):
    """Seconds of one stage: ``fixed_s + per_token_s * context_tokens``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fixed_s: float = Field(default=0.0, ge=0)
    per_token_s: float = Field(default=0.0, ge=0)

    def at(self, context_tokens: int) -> float:
        return self.fixed_s + self.per_token_s * context_tokens


class ModeStages(BaseModel):
    """The non-transfer stages of one mode, in order: edge prefill, scoring, encoding; cloud decode
    (dequantize + rebuild, or re-prefill in scout/text mode), generation (on the edge in local mode)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill: StageCost = StageCost()
    score: StageCost = StageCost()
    encode: StageCost = StageCost()
    decode: StageCost = StageCost()
    generate: StageCost = StageCost()

    def before_transfer_s(self, context_tokens: int) -> float:
        return self.prefill.at(context_tokens) + self.score.at(context_tokens) + self.encode.at(context_tokens)

    def after_transfer_s(self, context_tokens: int) -> float:
        return self.decode.at(context_tokens) + self.generate.at(context_tokens)


class StageTimes(JsonDocument):
    """Stage timings per mode for one model pair (measured by ``scout bench``; JSON via `load` / `save`)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    model_pair: str
    source: str = ""
    modes: dict[str, ModeStages]

    @classmethod
    def transfer_only(cls, model_pair: str, modes: Collection[str]) -> StageTimes:
        """Zero compute in every mode: plans on transfer time alone (label results that use this)."""
        return cls(
            model_pair=model_pair, source="transfer only: no stage times", modes={m: ModeStages() for m in modes}
        )

    def for_mode(self, mode: str) -> ModeStages:
        if mode not in self.modes:
            raise KeyError(f"no stage times for mode {mode!r} of {self.model_pair}; known: {', '.join(self.modes)}")
        return self.modes[mode]


@dataclass(frozen=True)
class Candidate:
    """One operating point evaluated for one request."""

    point: OperatingPoint
    quality: float
    bytes: int
    before_s: float
    transfer_s: float
    after_s: float

    @property
    def time_s(self) -> float:
        return self.before_s + self.transfer_s + self.after_s if math.isfinite(self.transfer_s) else math.inf


def _mbit(bps: float) -> str:
    return f"{bps / 1e6:.3g} Mbit/s"


def evaluate(
    point: OperatingPoint,
    request: PlanRequest,
    stages: StageTimes,
    table: OperatingPointTable,
    bandwidth_bps: float,
    *,
    queued_bytes: float = 0.0,
) -> Candidate:
    """Expected times of one point at a constant rate; the transfer starts once encoded *and* once the bytes
    already queued on the uplink are through (the transfer phase is ``max(before, queue) + bytes`` at B)."""
    if not bandwidth_bps >= 0:  # also rejects NaN
        raise ValueError(f"bandwidth must be >= 0 bit/s, got {bandwidth_bps}")
    if not 0 <= queued_bytes < math.inf:
        raise ValueError(f"queued_bytes must be finite and >= 0, got {queued_bytes}")
    n = request.context_tokens
    ms = stages.for_mode(point.mode)
    before, after = ms.before_transfer_s(n), ms.after_transfer_s(n)
    nbytes = point.bytes_for(n, request.extra_tokens)
    if nbytes == 0:
        transfer = 0.0
    elif bandwidth_bps == 0:
        transfer = math.inf
    else:
        start = max(before, 8.0 * queued_bytes / bandwidth_bps)
        transfer = start - before + 8.0 * nbytes / bandwidth_bps
    return Candidate(point, table.relative_quality(point), nbytes, before, transfer, after)


def min_rate_bps(point: OperatingPoint, request: PlanRequest, stages: StageTimes) -> float:
    """The smallest constant rate at which this point meets the deadline: 0 when it sends nothing and its
    compute fits, ``math.inf`` when the compute alone misses the deadline (no rate helps)."""
    ms = stages.for_mode(point.mode)
    n = request.context_tokens
    slack = request.deadline_s - ms.before_transfer_s(n) - ms.after_transfer_s(n)
    nbytes = point.bytes_for(n, request.extra_tokens)
    if nbytes == 0:
        return 0.0 if slack >= -DEADLINE_SLACK_S else math.inf
    if slack <= 0:
        return math.inf
    return 8.0 * nbytes / slack


def _candidates(
    request: PlanRequest, table: OperatingPointTable, modes: Collection[str] | None
) -> tuple[str, list[OperatingPoint]]:
    pair = table.resolve_pair(request.model_pair)
    points = [p for p in table.for_pair(pair) if modes is None or p.mode in modes]
    if not points:
        raise ValueError(f"no operating points for {pair}" + (f" in modes {sorted(modes)}" if modes else ""))
    return pair, points


def _rank_key(c: Candidate) -> tuple[float, int, float, str]:
    """Highest quality first; ties to fewer bytes, then less time, then the name (determinism)."""
    return (-c.quality, c.bytes, c.time_s, c.point.name)


def _to_plan(
    c: Candidate, request: PlanRequest, pair: str, bandwidth_bps: float, feasible: bool, fallback: bool, reason: str
) -> Plan:
    return Plan(
        request_id=request.request_id,
        model_pair=pair,
        mode=c.point.mode,
        retention=c.point.retention,
        point=c.point.name,
        bit_plan=c.point.plan,
        expected_bytes=c.bytes,
        expected_quality=c.quality,
        expected_time_s=c.time_s,
        compute_s=c.before_s + c.after_s,
        transfer_s=c.transfer_s,
        deadline_s=request.deadline_s,
        bandwidth_bps=bandwidth_bps,
        feasible=feasible,
        fallback=fallback,
        reason=reason,
    )


def _choose(cands: list[Candidate], request: PlanRequest, pair: str, bandwidth_bps: float, context: str) -> Plan:
    """The selection rule shared by every planner (see the module docstring)."""
    limit = request.deadline_s + DEADLINE_SLACK_S
    feasible = [c for c in cands if c.time_s <= limit]
    if feasible:
        best = min(feasible, key=_rank_key)
        reason = (
            f"{best.point.name} meets {request.deadline_s:.3f} s at {context} (expected {best.time_s:.3f} s); "
            f"highest quality of {len(feasible)} feasible of {len(cands)}"
        )
        return _to_plan(best, request, pair, bandwidth_bps, True, False, reason)
    fastest = min(cands, key=lambda c: (c.time_s, c.bytes, c.point.name))
    fastest_txt = f"{fastest.point.name} {fastest.time_s:.3f} s" if math.isfinite(fastest.time_s) else "none finishes"
    head = f"no operating point meets {request.deadline_s:.3f} s at {context} (fastest: {fastest_txt})"
    for mode in FALLBACK_ORDER:
        options = [c for c in cands if c.point.mode == mode and math.isfinite(c.time_s)]
        if options:
            pick = min(options, key=lambda c: (c.time_s, -c.quality, c.point.name))
            why = "no uplink needed" if pick.bytes == 0 else f"{pick.bytes} B, expected {pick.time_s:.3f} s"
            return _to_plan(pick, request, pair, bandwidth_bps, False, True, f"{head}; falling back to {mode} ({why})")
    if math.isfinite(fastest.time_s):
        reason = f"{head}; neither scout nor local can finish, sending the fastest: {fastest.point.name}"
    else:
        reason = f"{head}; neither scout nor local can finish, and nothing else can at this bandwidth"
    return _to_plan(fastest, request, pair, bandwidth_bps, False, True, reason)


def plan(
    request: PlanRequest,
    bandwidth_bps: float,
    table: OperatingPointTable,
    stages: StageTimes,
    *,
    modes: Collection[str] | None = None,
    queued_bytes: float = 0.0,
) -> Plan:
    """Plan against a bandwidth estimate (bit/s) assumed constant for the request's lifetime."""
    pair, points = _candidates(request, table, modes)
    cands = [evaluate(p, request, stages, table, bandwidth_bps, queued_bytes=queued_bytes) for p in points]
    return _choose(cands, request, pair, bandwidth_bps, _mbit(bandwidth_bps))


def plan_robust(
    request: PlanRequest,
    recent_bps: Sequence[float],
    table: OperatingPointTable,
    stages: StageTimes,
    *,
    quantile: float = 0.1,
    modes: Collection[str] | None = None,
    queued_bytes: float = 0.0,
) -> Plan:
    """Plan against the ``quantile`` (linear interpolation) of recent rate samples rather than a point estimate:
    a mode is chosen only if it would fit even at a rate the link undershoots a ``quantile`` of the time."""
    samples = np.asarray(list(recent_bps), dtype=np.float64)
    if samples.size == 0:
        raise ValueError("plan_robust needs at least one recent rate sample")
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    low = float(np.quantile(samples, quantile))
    pair, points = _candidates(request, table, modes)
    cands = [evaluate(p, request, stages, table, low, queued_bytes=queued_bytes) for p in points]
    context = f"{_mbit(low)} (q={quantile:g} of {samples.size} samples)"
    return _choose(cands, request, pair, low, context)


def plan_oracle(
    request: PlanRequest,
    t_s: float,
    process: BandwidthProcess,
    table: OperatingPointTable,
    stages: StageTimes,
    *,
    link_free_s: float = 0.0,
    modes: Collection[str] | None = None,
) -> Plan:
    """Plan with perfect knowledge of the future: each transfer is integrated on the actual process, starting
    when both the encoding and the uplink's earlier transfers (``link_free_s``) are done."""
    pair, points = _candidates(request, table, modes)
    cands = []
    for p in points:
        ms = stages.for_mode(p.mode)
        n = request.context_tokens
        before, after = ms.before_transfer_s(n), ms.after_transfer_s(n)
        nbytes = p.bytes_for(n, request.extra_tokens)
        if nbytes == 0:
            transfer = 0.0
        else:
            start = max(t_s + before, link_free_s)
            finish = process.transfer_finish_time(start, nbytes) if math.isfinite(start) else math.inf
            transfer = finish - (t_s + before)
        cands.append(Candidate(p, table.relative_quality(p), nbytes, before, transfer, after))
    horizon = request.deadline_s
    seen = process.mean_rate(t_s, t_s + horizon)
    return _choose(cands, request, pair, seen, f"the actual link (oracle; mean {_mbit(seen)} over the deadline)")


def plan_static(
    request: PlanRequest,
    point_name: str,
    bandwidth_bps: float,
    table: OperatingPointTable,
    stages: StageTimes,
    *,
    queued_bytes: float = 0.0,
) -> Plan:
    """Always the named point (a static baseline such as the study's "INT8 always"); feasibility is reported."""
    pair = table.resolve_pair(request.model_pair)
    c = evaluate(table.find(point_name, pair), request, stages, table, bandwidth_bps, queued_bytes=queued_bytes)
    ok = c.time_s <= request.deadline_s + DEADLINE_SLACK_S
    verdict = "meets" if ok else "misses"
    reason = (
        f"static {point_name} {verdict} {request.deadline_s:.3f} s at {_mbit(bandwidth_bps)} "
        f"(expected {c.time_s:.3f} s)"
    )
    return _to_plan(c, request, pair, bandwidth_bps, ok, False, reason)
