"""The transport policy's decision for one request: the deadline planner over an operating-point table when one
is configured, the threshold rule until then, and a mode the request forces either way (`plan_request`).

Why these live in the policy and not in `scout.pipeline`: they are decisions, not computations on a model. The
transport-policy service, the in-process path (`scout.pipeline.answer_inprocess`) and the tests all call
`plan_request`, so one rule answers the same request the same way everywhere. `PolicyConfig` says what the rule
plans with: the table and stage times ``scout eval``/``scout bench`` measured, and the codec's exact sizes for the
edge model's KV geometry (`PolicyConfig.for_model`) that the threshold rule and forced modes use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scout.codec.registry import bit_plan_of
from scout.policy.operating_points import KVGeometry, OperatingPointTable, SizeModel, codec_size_models
from scout.policy.planner import StageTimes, plan
from scout.policy.plans import DEFAULT_MIXED_PLAN, KV_MODES, MODES, Plan, PlanRequest, bit_plan_for

if TYPE_CHECKING:
    from scout.models import ModelSpec

__all__ = ["PolicyConfig", "forced_plan", "plan_request", "threshold_plan"]


@dataclass(frozen=True)
class PolicyConfig:
    """What the transport policy plans with.

    ``table`` (+ ``stages``): the operating points ``scout eval`` measured; with a table, `plan_request` runs the
    deadline planner. ``sizes``: ``mode -> (plan name, size model)`` from the codec for the edge model's geometry
    (`for_model`); the threshold rule and forced modes size their transfers with it. ``scout_retention`` is the
    retention of scout mode when nothing else says; ``transfer_fraction`` the share of the remaining deadline the
    threshold rule lets the transfer take (the rest is for compute it does not model).
    """

    table: OperatingPointTable | None = None
    stages: StageTimes | None = None
    sizes: Mapping[str, tuple[str, SizeModel]] = field(default_factory=dict)
    mixed_plan: str = DEFAULT_MIXED_PLAN
    scout_retention: float = 0.5
    transfer_fraction: float = 0.5
    threshold_modes: tuple[str, ...] = ("full", "int8", "mixed", "int4")

    def __post_init__(self) -> None:
        bit_plan_of(self.mixed_plan)  # a bad plan name fails here, not at the first request
        if not 0 < self.scout_retention <= 1:
            raise ValueError(f"scout_retention must be in (0, 1], got {self.scout_retention}")
        if not 0 < self.transfer_fraction <= 1:
            raise ValueError(f"transfer_fraction must be in (0, 1], got {self.transfer_fraction}")
        unknown = [m for m in self.threshold_modes if m not in KV_MODES]
        if unknown:
            raise ValueError(f"threshold_modes must be KV modes, got {unknown}")

    @classmethod
    def for_model(cls, spec: ModelSpec, *, mixed_plan: str = DEFAULT_MIXED_PLAN, **options: Any) -> PolicyConfig:
        """Sizes from the codec for ``spec``'s KV geometry at the wire's bf16 (see `codec_size_models`)."""
        bits = bit_plan_of(mixed_plan)
        bits.validate(spec.num_layers)
        geometry = KVGeometry(num_layers=spec.num_layers, kv_heads=spec.num_kv_heads, head_dim=spec.head_dim)
        sizes = codec_size_models(geometry, mixed_overrides=dict(bits.overrides) or None)
        # A mixed plan without overrides is plain int4 under the mixed name: size it as int4.
        sizes["mixed"] = (mixed_plan, sizes.get("mixed", sizes["int4"])[1])
        return cls(sizes=sizes, mixed_plan=mixed_plan, **options)

    def default_retention(self, mode: str) -> float:
        return self.scout_retention if mode == "scout" else 1.0

    def size_bytes(self, mode: str, context_tokens: int, retention: float, extra_tokens: int = 0) -> int | None:
        """Bytes of ``mode`` at ``retention`` from the table's point or the codec sizes; None if neither knows.

        ``extra_tokens``: the hand-off cache's tokens outside the context, which KV modes carry in full.
        """
        if self.table is not None:
            try:
                return self.table.get(mode, retention).bytes_for(context_tokens, extra_tokens)
            except (KeyError, ValueError):
                pass
        if mode in self.sizes:
            return self.sizes[mode][1].size_bytes(context_tokens, retention, extra_tokens)
        return 0 if mode == "local" else None


def _transfer_s(nbytes: int, bandwidth_bps: float) -> float:
    if nbytes == 0:
        return 0.0
    return math.inf if bandwidth_bps <= 0 else 8.0 * nbytes / bandwidth_bps


def forced_plan(
    policy: PolicyConfig, request: PlanRequest, bandwidth_bps: float, *, mode: str, retention: float | None = None
) -> Plan:
    """The plan for a mode the request forces: sized, timed at the estimated rate, judged against the deadline."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    r = policy.default_retention(mode) if retention is None else float(retention)
    if mode in ("text", "local"):
        r = 1.0
    context_tokens, deadline_s = request.context_tokens, request.deadline_s
    nbytes = policy.size_bytes(mode, context_tokens, r, request.extra_tokens) or 0
    bit_plan = bit_plan_for(mode, policy.mixed_plan)
    quality, compute, pair = math.nan, 0.0, request.model_pair or ""
    if policy.table is not None:
        try:
            point = policy.table.get(mode, r, request.model_pair)
            quality, pair, bit_plan = policy.table.relative_quality(point), point.model_pair, point.plan or bit_plan
        except (KeyError, ValueError):
            pass
    if policy.stages is not None and mode in policy.stages.modes:
        ms = policy.stages.for_mode(mode)
        compute = ms.before_transfer_s(context_tokens) + ms.after_transfer_s(context_tokens)
    transfer = _transfer_s(nbytes, bandwidth_bps)
    total = compute + transfer
    feasible = total <= deadline_s
    return Plan(
        request_id=request.request_id,
        model_pair=pair,
        mode=mode,
        retention=r,
        point=mode if r == 1.0 else f"{mode}@{r:g}",
        bit_plan=bit_plan,
        expected_bytes=nbytes,
        expected_quality=quality,
        expected_time_s=total,
        compute_s=compute,
        transfer_s=transfer,
        deadline_s=deadline_s,
        bandwidth_bps=bandwidth_bps,
        feasible=feasible,
        fallback=False,
        reason=f"mode {mode} forced by the request ({nbytes} B, {'meets' if feasible else 'misses'} the deadline)",
    )


def threshold_plan(policy: PolicyConfig, request: PlanRequest, bandwidth_bps: float) -> Plan:
    """The rule used until an operating-point table is configured (same `Plan` interface as the planner).

    The transfer may take ``transfer_fraction`` of the remaining deadline. The first of ``threshold_modes``
    (quality order: full, int8, mixed, int4) whose codec-exact size crosses the uplink within that budget at the
    estimated rate is chosen; so each KV mode has a rate threshold ``8 * bytes / budget`` that scales with the
    context length and the deadline. Below int4's threshold: ``scout`` at ``scout_retention`` (hundreds of
    bytes). No uplink at all (rate 0): ``local``. Expected quality is unknown without a table (NaN).
    """
    context_tokens, deadline_s = request.context_tokens, request.deadline_s
    budget = policy.transfer_fraction * deadline_s

    def plan_for(mode: str, retention: float, nbytes: int, fallback: bool, why: str) -> Plan:
        transfer = _transfer_s(nbytes, bandwidth_bps)
        return Plan(
            request_id=request.request_id,
            model_pair=request.model_pair or "",
            mode=mode,
            retention=retention,
            point=mode if retention == 1.0 else f"{mode}@{retention:g}",
            bit_plan=bit_plan_for(mode, policy.mixed_plan),
            expected_bytes=nbytes,
            expected_quality=math.nan,
            expected_time_s=transfer,
            compute_s=0.0,
            transfer_s=transfer,
            deadline_s=deadline_s,
            bandwidth_bps=bandwidth_bps,
            feasible=transfer <= budget,
            fallback=fallback,
            reason=f"threshold rule (no operating-point table): {why}",
        )

    rate = f"{bandwidth_bps / 1e6:.3g} Mbit/s"
    if bandwidth_bps <= 0:
        return plan_for("local", 1.0, 0, True, "no uplink (rate 0): the edge answers")
    for mode in policy.threshold_modes:
        if mode not in policy.sizes:
            continue
        nbytes = policy.sizes[mode][1].size_bytes(context_tokens, 1.0, request.extra_tokens)
        if _transfer_s(nbytes, bandwidth_bps) <= budget:
            return plan_for(mode, 1.0, nbytes, False, f"{mode} ({nbytes} B) crosses {rate} within {budget:.3f} s")
    r = policy.scout_retention
    nbytes = policy.size_bytes("scout", context_tokens, r) or 0
    why = f"no KV mode crosses {rate} within {budget:.3f} s; scout@{r:g} sends {nbytes} B"
    return plan_for("scout", r, nbytes, False, why)


def plan_request(
    policy: PolicyConfig,
    *,
    context_tokens: int,
    deadline_s: float,
    bandwidth_bps: float,
    elapsed_s: float = 0.0,
    mode: str | None = None,
    retention: float | None = None,
    model_pair: str | None = None,
    request_id: str = "",
    extra_tokens: int = 0,
) -> Plan:
    """The transport policy's decision for one request (see the module docstring).

    ``deadline_s`` is the request's whole deadline; ``elapsed_s`` what the edge already spent (the planner gets
    the remainder, at least 1 ms so an overdue request still gets a plan: its fallback). ``extra_tokens``: the
    hand-off cache's tokens outside the context (``prompt_tokens - 1 - context_tokens``), sent in full by KV
    modes; without them a plan under-sizes every KV transfer by the instruction and the question.
    """
    request = PlanRequest(
        context_tokens=context_tokens,
        deadline_s=max(deadline_s - elapsed_s, 1e-3),
        model_pair=model_pair,
        request_id=request_id,
        extra_tokens=extra_tokens,
    )
    if mode is not None:
        return forced_plan(policy, request, bandwidth_bps, mode=mode, retention=retention)
    if policy.table is not None:
        pair = policy.table.resolve_pair(model_pair)
        modes = {p.mode for p in policy.table.for_pair(pair)}
        stages = policy.stages or StageTimes.transfer_only(pair, modes)
        return plan(request.model_copy(update={"model_pair": pair}), bandwidth_bps, policy.table, stages)
    return threshold_plan(policy, request, bandwidth_bps)
