"""Planner choices on constructed cases that `test_policy.py` does not already pin: the far side of the deadline
boundary, ties in quality *and* bytes, the documented fallback order, zero bandwidth with no local mode, robust
planning on an outage sample, and planning after the edge prefill in the simulator.

Sizes at n = 1000 context tokens are round numbers; every expected choice is computable by hand.
"""

from __future__ import annotations

from functools import partial

import pytest
from policy_helpers import point

from scout.channel.process import StepProcess
from scout.policy.operating_points import OperatingPoint, OperatingPointTable
from scout.policy.planner import (
    DEADLINE_SLACK_S,
    ModeStages,
    PlanRequest,
    StageCost,
    StageTimes,
    min_rate_bps,
    plan,
    plan_oracle,
    plan_robust,
)
from scout_eval.simulate import SimConfig, SimRequest, parse_policy, simulate

PAIR = "e->c"


pt = partial(point, pair=PAIR, n=50, plan="")
"""This file's points: its own pair, 50 examples each, no bit-plan name."""


def table(*points: OperatingPoint) -> OperatingPointTable:
    return OperatingPointTable(reference={PAIR: 1.0}, points=list(points))


def stages(**modes: ModeStages) -> StageTimes:
    return StageTimes(model_pair=PAIR, modes=modes)


KV = ModeStages(prefill=StageCost(fixed_s=0.1), decode=StageCost(fixed_s=0.4))  # 0.5 s of compute


def req(deadline: float) -> PlanRequest:
    return PlanRequest(context_tokens=1000, deadline_s=deadline)


def test_a_deadline_missed_by_more_than_the_slack_is_missed() -> None:
    t = table(pt("full", 1.0, 1000), pt("int8", 0.9, 500))
    st = stages(full=KV, int8=KV)
    # full: 0.5 s + 8 Mbit at 8 Mbit/s = 1.5 s. Exactly 1.5 s is met (test_policy), a microsecond less is not.
    p = plan(req(1.5 - 1e-6), 8e6, t, st)
    assert (p.mode, p.feasible) == ("int8", True)
    assert plan(req(1.5 - DEADLINE_SLACK_S / 2), 8e6, t, st).mode == "full"  # within the round-off slack


def test_equal_quality_and_bytes_go_to_the_faster_point() -> None:
    slow = ModeStages(prefill=StageCost(fixed_s=0.1), decode=StageCost(fixed_s=0.9))
    t = table(pt("int8", 0.9, 500), pt("mixed", 0.9, 500))
    p = plan(req(10.0), 8e6, t, stages(int8=slow, mixed=KV))
    assert (p.mode, p.feasible) == ("mixed", True)  # same quality, same 500 kB; 1.0 s against 1.5 s
    assert p.expected_time_s == pytest.approx(1.0)


def test_fallback_order_is_scout_then_local_even_when_local_is_faster() -> None:
    t = table(pt("int4", 0.9, 250), pt("scout", 0.8, 0.125, fixed=100, basis="context"), pt("local", 0.5))
    st = stages(
        int4=KV,
        scout=ModeStages(decode=StageCost(fixed_s=2.0)),  # 2 s of cloud re-prefill
        local=ModeStages(generate=StageCost(fixed_s=1.0)),  # 1 s on the edge
    )
    p = plan(req(0.8), 1e6, t, st)  # int4 2.5 s, scout ~2.0 s, local 1.0 s: nothing meets 0.8 s
    assert (p.mode, p.feasible, p.fallback) == ("scout", False, True)
    assert "falling back to scout" in p.reason


def test_zero_bandwidth_without_local_says_nothing_can_finish() -> None:
    t = table(pt("int4", 0.9, 250), pt("scout", 0.8, 0.125, fixed=100, basis="context"))
    p = plan(req(5.0), 0.0, t, stages(int4=KV, scout=KV))
    assert (p.feasible, p.fallback) == (False, True)
    assert "nothing else can at this bandwidth" in p.reason
    assert min_rate_bps(t.get("int4"), req(5.0), stages(int4=KV)) == pytest.approx(8 * 250_000 / 4.5)
    free = table(pt("local", 0.5))
    assert min_rate_bps(free.get("local"), req(0.4), stages(local=KV)) == float("inf")  # compute alone misses
    assert min_rate_bps(free.get("local"), req(0.5), stages(local=KV)) == 0.0


def test_robust_plans_an_outage_sample_as_no_uplink() -> None:
    t = table(pt("full", 1.0, 1000), pt("local", 0.5))
    st = stages(full=KV, local=KV)
    p = plan_robust(req(3.0), [50e6, 0.0, 50e6, 50e6], t, st, quantile=0.0)
    assert (p.mode, p.bandwidth_bps, p.feasible) == ("local", 0.0, True)
    assert plan_robust(req(3.0), [50e6, 0.0, 50e6, 50e6], t, st, quantile=0.5).mode == "full"


def test_oracle_meets_a_deadline_exactly_across_a_rate_step() -> None:
    t = table(pt("full", 1.0, 1000), pt("int4", 0.9, 250))
    link = StepProcess([0.0, 0.6], [4e6, 12e6], 100.0)
    # full: encoded at 0.1 s; 2 Mbit by 0.6 s, the other 6 Mbit at 12 Mbit/s by 1.1 s; decode 0.4 s -> 1.5 s.
    p = plan_oracle(req(1.5), 0.0, link, t, stages(full=KV, int4=KV))
    assert (p.mode, p.feasible) == ("full", True)
    assert p.expected_time_s == pytest.approx(1.5)


def test_planning_after_the_prefill_sees_a_drop_during_it() -> None:
    """The edge's prefill takes 2 s; the link drops from 8 to 1 Mbit/s at 1 s. Planned at arrival, the estimate
    is the 8 Mbit/s of t = 0 and full misses; planned after the prefill (as the pipeline plans), the probes have
    seen the drop and the smaller point is chosen and met."""
    pre = ModeStages(prefill=StageCost(fixed_s=2.0), decode=StageCost(fixed_s=0.1))
    t = table(pt("full", 1.0, 1000), pt("int4", 0.9, 25))  # 8 Mbit / 0.2 Mbit
    st = stages(full=pre, int4=pre)
    link = StepProcess([0.0, 1.0], [8e6, 1e6], 1000.0, loop=True)
    reqs = [SimRequest(request_id="r", t_s=0.0, context_tokens=1000, deadline_s=3.5)]
    policy = parse_policy("adaptive:last")
    at_arrival = simulate(reqs, link, t, st, policy, SimConfig(probe_interval_s=0.5))
    after = simulate(reqs, link, t, st, policy, SimConfig(probe_interval_s=0.5, plan_after_prefill=True))
    assert (at_arrival.records[0].point, at_arrival.records[0].met) == ("full", False)
    assert at_arrival.records[0].estimate_bps == 8e6
    assert (after.records[0].point, after.records[0].met) == ("int4", True)
    assert after.records[0].estimate_bps == pytest.approx(1e6)
    assert after.records[0].t_s == 0.0  # the record still counts from arrival


def test_prompt_tokens_around_the_context_can_tip_a_kv_mode_over_the_deadline() -> None:
    """KV modes carry the instruction and question beside the context; position sets index the context only."""
    t = table(pt("full", 1.0, 1000), pt("scout", 0.5, 0.125, fixed=10, basis="context"))
    st = stages(full=KV, scout=KV)
    # full at 1000 context tokens: 0.5 s + 8 Mbit / 8 Mbit/s = 1.5 s; with 100 more prompt tokens 1.6 s.
    assert plan(req(1.55), 8e6, t, st).mode == "full"
    wide = PlanRequest(context_tokens=1000, deadline_s=1.55, extra_tokens=100)
    p = plan(wide, 8e6, t, st)
    assert (p.mode, p.bytes) == ("scout", 10 + 125)
    assert min_rate_bps(pt("full", 1.0, 1000), wide, st) == pytest.approx(8 * 1_100_000 / 1.05)
    sim_request = SimRequest(request_id="r", t_s=0.0, context_tokens=1000, deadline_s=1.55, extra_tokens=100)
    assert sim_request.plan_request() == wide.model_copy(update={"request_id": "r"})
