"""The policy: estimators, operating points sized by the codec, the deadline planner, the multi-device allocator,
the simulation loop and the `scout traces` / `scout simulate` commands.

Every table here is constructed for the test (sizes and qualities chosen to make the expected choice
computable by hand); none of it is a measurement.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from policy_helpers import PAIR, point
from pydantic import ValidationError
from typer.testing import CliRunner

from scout.channel.markov import MarkovBandwidth, study_preset
from scout.channel.process import StepProcess
from scout.policy.allocator import (
    DeviceDemand,
    allocate_brute_force,
    allocate_equal,
    allocate_model_aware,
    allocate_proportional,
)
from scout.policy.estimators import EWMA, HarmonicMean, LastSample, LowQuantile, goodput_bps, make_estimator
from scout.policy.operating_points import (
    OperatingPoint,
    OperatingPointTable,
    SizeModel,
    kept_tokens,
)
from scout.policy.planner import (
    ModeStages,
    Plan,
    PlanRequest,
    StageCost,
    StageTimes,
    min_rate_bps,
    plan,
    plan_oracle,
    plan_robust,
    plan_static,
)
from scout_eval.simulate import (
    SimConfig,
    SimRequest,
    StreamConfig,
    compare,
    parse_policy,
    request_stream,
    simulate,
)


# ----------------------------------------------------------------------------------------------------------------
# a constructed table: n = 1000 context tokens makes every size a round number
# ----------------------------------------------------------------------------------------------------------------
def make_table(*, with_fallbacks: bool = True) -> OperatingPointTable:
    pts = [
        point("full", 1.00, 1000),  # 1 MB at n = 1000 -> 8 Mbit
        point("int8", 0.99, 500),  # 4 Mbit
        point("mixed", 0.99, 260),  # 2.08 Mbit, same quality as int8: ties go to fewer bytes
        point("int4", 0.90, 250),  # 2 Mbit
    ]
    if with_fallbacks:
        pts += [point("scout", 0.85, 0.125, fixed=100, basis="context"), point("local", 0.50)]
    return OperatingPointTable(metric="f1", source="constructed for tests", reference={PAIR: 1.0}, points=pts)


def make_stages() -> StageTimes:
    kv = ModeStages(
        prefill=StageCost(fixed_s=0.1),
        encode=StageCost(fixed_s=0.05),
        decode=StageCost(fixed_s=0.05),
        generate=StageCost(fixed_s=0.3),
    )  # 0.15 s before the transfer, 0.35 s after
    return StageTimes(
        model_pair=PAIR,
        modes={
            "full": kv,
            "int8": kv,
            "mixed": kv,
            "int4": kv,
            "scout": ModeStages(
                prefill=StageCost(fixed_s=0.1), decode=StageCost(fixed_s=0.6), generate=StageCost(fixed_s=0.3)
            ),
            "local": ModeStages(prefill=StageCost(fixed_s=0.1), generate=StageCost(fixed_s=1.5)),
        },
    )


def req(deadline: float, n: int = 1000) -> PlanRequest:
    return PlanRequest(context_tokens=n, deadline_s=deadline, request_id="q")


# ----------------------------------------------------------------------------------------------------------------
# estimators
# ----------------------------------------------------------------------------------------------------------------
def test_last_sample_and_prior() -> None:
    e = LastSample(prior_bps=7.0)
    assert e.estimate() == 7.0
    for t, x in enumerate([10.0, 20.0, 5.0]):
        e.update(t, x)
    assert e.estimate() == 5.0


def test_ewma_known_sequence_and_half_life() -> None:
    e = EWMA(0.5)
    for t, x in enumerate([10.0, 20.0, 40.0]):
        e.update(t, x)
    assert e.estimate() == 27.5  # 10 -> 15 -> 27.5
    h = EWMA(half_life_s=2.0)
    h.update(0.0, 10.0)
    h.update(2.0, 30.0)  # one half-life later: weight 1/2
    assert h.estimate() == pytest.approx(20.0)
    h.update(2.0, 30.0)  # no time passed: weight 0
    assert h.estimate() == pytest.approx(20.0)


def test_harmonic_mean_window_zero_and_spike_robustness() -> None:
    e = HarmonicMean(k=3)
    for t, x in enumerate([10.0, 20.0, 40.0, 10.0]):
        e.update(t, x)
    assert e.estimate() == pytest.approx(3 / (1 / 20 + 1 / 40 + 1 / 10))
    spike = HarmonicMean(k=3)
    for t, x in enumerate([10e6, 10e6, 1000e6]):
        spike.update(t, x)
    assert spike.estimate() < 15.1e6 < np.mean([10e6, 10e6, 1000e6])  # one burst barely moves it
    spike.update(4, 0.0)
    assert spike.estimate() == 0.0  # an outage in the window


def test_low_quantile_window() -> None:
    e = LowQuantile(q=0.25, k=5)
    for t, x in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        e.update(t, x)
    assert e.estimate() == 2.0
    e.update(5, 100.0)  # window now 2, 3, 4, 5, 100
    assert e.estimate() == 3.0


def test_estimators_reject_bad_samples_and_specs() -> None:
    e = EWMA()
    e.update(2.0, 1.0)
    with pytest.raises(ValueError):
        e.update(1.0, 1.0)  # out of order
    with pytest.raises(ValueError):
        e.update(3.0, -1.0)
    assert isinstance(make_estimator("quantile:0.2:7"), LowQuantile)
    assert make_estimator("harmonic:4").k == 4  # type: ignore[attr-defined]
    assert make_estimator("ewma:0.25").alpha == 0.25  # type: ignore[attr-defined]
    for bad in ("ewma:2", "median", "harmonic:x", "last:1"):
        with pytest.raises(ValueError):
            make_estimator(bad)
    assert goodput_bps(1_000_000, 2.0) == 4e6


# ----------------------------------------------------------------------------------------------------------------
# operating points
# ----------------------------------------------------------------------------------------------------------------
def test_table_json_round_trip_and_lookup(tmp_path: Path) -> None:
    table = make_table()
    loaded = OperatingPointTable.load(table.save(tmp_path / "ops.json"))
    assert loaded == table
    assert loaded.get("int8").bytes_for(1000) == 500_000
    assert loaded.bytes_for("scout", 1000) == 100 + 125
    assert loaded.bytes_for("local", 1000) == 0
    assert loaded.find("mixed").quality_mean == 0.99
    with pytest.raises(KeyError):
        loaded.get("int2")


def test_table_validation_and_reference() -> None:
    with pytest.raises(ValidationError):
        OperatingPointTable(points=[point("int8", 0.9, 1), point("int8", 0.8, 1)])  # duplicate
    with pytest.raises(ValidationError):
        OperatingPoint(mode="int8", quality_mean=0.9, quality_lo=0.95, quality_hi=1.0, n=5, model_pair=PAIR)
    no_ref = OperatingPointTable(points=[point("full", 0.8, 10), point("int4", 0.6, 3)])
    assert no_ref.relative_quality(no_ref.get("int4")) == pytest.approx(0.75)  # reference = the full point
    with pytest.raises(ValueError, match="reference"):
        OperatingPointTable(points=[point("int4", 0.6, 3)]).reference_quality()
    two_pairs = OperatingPointTable(points=[point("full", 1, 1), point("full", 1, 1, pair="other")])
    with pytest.raises(ValueError, match="name one"):
        two_pairs.get("full")


def test_kept_tokens_and_retention_sizes() -> None:
    assert kept_tokens(1024, 0.75) == 768
    assert kept_tokens(7, 0.1) == 1
    assert kept_tokens(10, 0.25) == 3  # ceil(2.5)
    assert kept_tokens(0, 0.5) == 0
    sel = point("int8", 0.7, 500, retention=0.25)
    assert sel.name == "int8@0.25" and sel.bytes_for(1000) == 250 * 500


# Small, odd geometries as well as a Qwen2.5-7B-like one: every residue of the channel-axis group is exercised.
GEOMETRIES = [(28, 4, 128), (3, 2, 24), (1, 1, 8), (5, 3, 40)]


@pytest.mark.parametrize(("layers", "heads", "dim"), GEOMETRIES)
def test_codec_sizes_match_the_codec_exactly(layers: int, heads: int, dim: int) -> None:
    from scout.codec.quant import BitPlan, QuantSpec, estimate_bytes
    from scout.codec.registry import bit_plan_of
    from scout.models import ModelSpec
    from scout.policy.operating_points import POSITIONS_ITEMSIZE, KVGeometry, codec_size_models, kv_size_model

    spec = ModelSpec(
        name="g", source="test", model_type="t", num_layers=layers, num_heads=heads, num_kv_heads=heads,
        head_dim=dim, hidden_size=heads * dim, vocab_size=10,
    )  # fmt: skip
    geo = KVGeometry.from_spec(spec)
    models = codec_size_models(geo, mixed_overrides={0: 16})
    assert [models[m][0] for m in ("full", "int8", "int4", "mixed")] == ["bf16", "int8", "int4", "mixed:0=16"]
    overrides = {layers - 1: 8, 0: 16}  # the mixed plan's name is one the registry parses back to the plan
    assert bit_plan_of(codec_size_models(geo, mixed_overrides=overrides)["mixed"][0]) == BitPlan(4, overrides)
    plans = {"full": BitPlan(16), "int8": BitPlan(8), "int4": BitPlan(4), "mixed": BitPlan(4, {0: 16})}
    for n in (1, 2, 31, 32, 33, 100, 1000, 1024, 1500):
        for retention in (1.0, 0.75, 0.5, 0.25):
            k = kept_tokens(n, retention)
            for mode, bp in plans.items():
                expected = estimate_bytes(layers, heads, k, dim, bp, QuantSpec(bp.default)) + POSITIONS_ITEMSIZE * k
                assert models[mode][1].size_bytes(n, retention) == expected, (mode, n, retention)
        assert models["full"][1].size_bytes(n) == spec.kv_bytes(n) + POSITIONS_ITEMSIZE * n
        # The instruction and question around the context travel in full: one sequence with the kept tokens.
        for extra in (1, 17, 40):
            k = kept_tokens(n, 0.5) + extra
            bp = plans["int4"]
            expected = estimate_bytes(layers, heads, k, dim, bp, QuantSpec(4)) + POSITIONS_ITEMSIZE * k
            assert models["int4"][1].size_bytes(n, 0.5, extra) == expected
    token_axis = QuantSpec(4, axis_k="token", axis_v="token", group_size=16, symmetric=True)
    sm = kv_size_model(geo, 4, token_axis, header_bytes=777)
    for n in (1, 15, 16, 17, 999):
        assert sm.size_bytes(n) == estimate_bytes(layers, heads, n, dim, 4, token_axis) + 4 * n + 777


def test_scout_size_bounds_the_real_position_codec() -> None:
    from scout.policy.operating_points import positions_size_model
    from scout.positions import CHECK_BYTES, encode_positions

    model = positions_size_model(message_bytes=40)
    assert model.size_bytes(100, 0.5, extra_tokens=30) == model.size_bytes(100, 0.5)  # positions index the context
    with pytest.raises(ValueError, match="extra_tokens"):
        model.size_bytes(100, 0.5, extra_tokens=-1)
    rng = np.random.default_rng(0)
    for n in (1, 8, 9, 300, 1024, 4099):
        for retention in (0.05, 0.25, 0.5, 0.75, 1.0):
            k = kept_tokens(n, retention)
            scattered = np.sort(rng.choice(n, size=k, replace=False))
            clustered = np.arange(k)
            for kept in (scattered, clustered):
                assert len(encode_positions(kept, n)) + 40 <= model.size_bytes(n, retention)
        assert model.size_bytes(n) == 40 + 1 + CHECK_BYTES + math.ceil(n / 8)  # tag, CRC, bitmap


# ----------------------------------------------------------------------------------------------------------------
# planner
# ----------------------------------------------------------------------------------------------------------------
def test_deadline_exactly_met_is_met() -> None:
    # full: 0.15 s + 8 Mbit at 8 Mbit/s + 0.35 s = 1.5 s, exactly the deadline.
    p = plan(req(1.5), 8e6, make_table(), make_stages())
    assert (p.mode, p.feasible, p.fallback) == ("full", True, False)
    assert p.expected_time_s == pytest.approx(1.5, abs=1e-12)
    assert p.bytes == 1_000_000 and p.expected_quality == 1.0
    assert "full meets" in p.reason
    assert min_rate_bps(make_table().get("full"), req(1.5), make_stages()) == pytest.approx(8e6)


def test_quality_ties_go_to_fewer_bytes() -> None:
    # A hair under 1.5 s: full no longer fits; int8 (1.0 s) and mixed (0.76 s) tie at 0.99 -> mixed, fewer bytes.
    p = plan(req(1.4999), 8e6, make_table(), make_stages())
    assert (p.mode, p.bytes, p.feasible) == ("mixed", 260_000, True)
    assert p.expected_quality == 0.99


def test_none_feasible_falls_back_to_scout_with_reason() -> None:
    # 1 Mbit/s, 0.9 s: int4 needs 2.5 s, scout 1.0018 s, local 1.6 s.
    p = plan(req(0.9), 1e6, make_table(), make_stages())
    assert (p.mode, p.feasible, p.fallback) == ("scout", False, True)
    assert "no operating point meets" in p.reason and "falling back to scout" in p.reason
    assert p.expected_time_s == pytest.approx(1.0 + 225 * 8 / 1e6)


def test_zero_bandwidth_uses_local_or_falls_back_to_it() -> None:
    p = plan(req(2.0), 0.0, make_table(), make_stages())
    assert (p.mode, p.feasible, p.bytes) == ("local", True, 0)  # the only mode without an uplink, and it fits
    q = plan(req(1.0), 0.0, make_table(), make_stages())
    assert (q.mode, q.feasible, q.fallback) == ("local", False, True)
    assert "falling back to local (no uplink needed)" in q.reason
    assert math.isinf(plan_static(req(1.0), "int4", 0.0, make_table(), make_stages()).expected_time_s)
    restored = Plan.model_validate_json(
        plan_static(req(1.0), "int4", 0.0, make_table(), make_stages()).model_dump_json()
    )
    assert math.isinf(restored.expected_time_s)  # inf survives JSON (as "Infinity")


def test_no_fallback_available_sends_the_fastest_and_says_so() -> None:
    p = plan(req(0.5), 1e6, make_table(with_fallbacks=False), make_stages())
    assert (p.mode, p.feasible, p.fallback) == ("int4", False, True)
    assert "neither scout nor local can finish" in p.reason


def test_queued_bytes_delay_the_transfer() -> None:
    p = plan_static(req(10.0), "full", 8e6, make_table(), make_stages(), queued_bytes=1_000_000)
    assert p.expected_time_s == pytest.approx(1.0 + 1.0 + 0.35)  # wait 1 s for the queue, 1 s own, then decode


def test_robust_plans_on_the_low_quantile() -> None:
    samples = [2e6, 30e6, 30e6, 30e6, 2e6, 30e6, 30e6, 30e6, 30e6, 30e6]  # slow 20 % of the time
    r = plan_robust(req(1.5), samples, make_table(), make_stages(), quantile=0.1)
    low = float(np.quantile(samples, 0.1))
    assert r.bandwidth_bps == low == 2e6
    assert r.point == plan(req(1.5), low, make_table(), make_stages()).point
    assert plan(req(1.5), 30e6, make_table(), make_stages()).mode == "full"
    assert r.mode != "full"  # the cautious estimate does not bet on the fast samples
    with pytest.raises(ValueError):
        plan_robust(req(1.5), [], make_table(), make_stages())


def link_that_drops() -> StepProcess:
    """8 Mbit/s until 0.7 s, then nothing (a finite trace that ends)."""
    return StepProcess([0.0, 0.7], [8e6, 0.0], 100.0)


def test_oracle_sees_the_drop_the_estimate_cannot() -> None:
    table, stages = make_table(), make_stages()
    naive = plan(req(1.5), 8e6, table, stages)
    assert naive.mode == "full"  # at a steady 8 Mbit/s full fits exactly
    o = plan_oracle(req(1.5), 0.0, link_that_drops(), table, stages)
    # From 0.15 s to 0.7 s the link carries 4.4 Mbit: int8 (4 Mbit) and mixed fit, full never finishes.
    assert (o.mode, o.feasible) == ("mixed", True)
    assert o.expected_time_s == pytest.approx(0.15 + 2.08e6 / 8e6 + 0.35)


def test_stage_times_round_trip_and_missing_mode(tmp_path: Path) -> None:
    st = make_stages()
    assert StageTimes.load(st.save(tmp_path / "stages.json")) == st
    with pytest.raises(KeyError, match="no stage times"):
        st.for_mode("int2")
    assert StageCost(fixed_s=0.1, per_token_s=1e-4).at(1000) == pytest.approx(0.2)


# ----------------------------------------------------------------------------------------------------------------
# allocator
# ----------------------------------------------------------------------------------------------------------------
def random_demands(rng: np.random.Generator, n_dev: int) -> list[DeviceDemand]:
    out = []
    for d in range(n_dev):
        pair = f"pair{d}"
        modes = [f"m{j}" for j in range(int(rng.integers(1, 4)))]
        pts = [
            point(m, float(np.round(rng.uniform(0.3, 1.0), 2)), float(rng.integers(0, 4000)), pair=pair) for m in modes
        ]
        stages = StageTimes(
            model_pair=pair,
            modes={m: ModeStages(prefill=StageCost(fixed_s=float(rng.uniform(0, 0.8)))) for m in modes},
        )
        table = OperatingPointTable(reference={pair: 1.0}, points=pts)
        deadline = float(rng.uniform(0.5, 2.0))
        out.append(
            DeviceDemand(f"d{d}", PlanRequest(context_tokens=1000, deadline_s=deadline, model_pair=pair), table, stages)
        )
    return out


def test_model_aware_matches_brute_force_and_dominates_static_splits() -> None:
    rng = np.random.default_rng(42)
    for _ in range(80):
        demands = random_demands(rng, int(rng.integers(1, 5)))
        capacity = float(rng.uniform(1e6, 40e6))
        ma = allocate_model_aware(demands, capacity)
        bf_met, bf_quality = allocate_brute_force(demands, capacity)
        assert ma.exact and ma.met == bf_met
        assert ma.total_quality == pytest.approx(bf_quality, abs=1e-9)
        assert sum(d.share_bps for d in ma.devices) <= capacity * (1 + 1e-9)
        for row, dem in zip(ma.devices, demands, strict=True):
            if row.plan.feasible:
                assert row.share_bps >= row.need_bps * (1 - 1e-12)
                assert row.plan.expected_time_s <= dem.request.deadline_s + 1e-9
        for static in (allocate_equal(demands, capacity), allocate_proportional(demands, capacity, size_mode="m0")):
            assert (ma.met, ma.total_quality + 1e-9) >= (static.met, static.total_quality)


def test_capped_frontier_is_marked_inexact_but_feasible() -> None:
    demands = random_demands(np.random.default_rng(7), 4)
    ma = allocate_model_aware(demands, 20e6, max_frontier=1)
    assert not ma.exact
    assert sum(d.share_bps for d in ma.devices) <= 20e6 * (1 + 1e-9)
    assert ma.met <= allocate_brute_force(demands, 20e6)[0]


def study_scenario() -> list[DeviceDemand]:
    """The study's setting, with a constructed table: 4 devices share 50 Mbit/s; two run a large-KV model pair
    (no scout partner, an edge too slow to answer locally in time), two a small one that can use Scout."""
    kv = ModeStages(prefill=StageCost(fixed_s=0.1), decode=StageCost(fixed_s=0.1))  # 0.2 s of compute
    large = OperatingPointTable(
        reference={"large": 1.0},
        points=[
            point("full", 1.00, 20_000, pair="large"),  # 20 MB at n = 1000: 80 Mbit/s for a 2 s transfer
            point("int8", 0.99, 10_000, pair="large"),  # 40 Mbit/s
            point("int4", 0.95, 5_000, pair="large"),  # 20 Mbit/s
            point("local", 0.40, pair="large"),
        ],
    )
    large_st = StageTimes(
        model_pair="large",
        modes={"full": kv, "int8": kv, "int4": kv, "local": ModeStages(generate=StageCost(fixed_s=3.0))},
    )
    small = OperatingPointTable(
        reference={"small": 1.0},
        points=[
            point("full", 1.00, 8_000, pair="small"),  # 32 Mbit/s
            point("int8", 0.99, 4_000, pair="small"),  # 16 Mbit/s
            point("int4", 0.97, 2_000, pair="small"),  # 8 Mbit/s
            point("scout", 0.90, 0.125, fixed=100, basis="context", pair="small"),  # 225 B in 0.7 s
            point("local", 0.60, pair="small"),
        ],
    )
    small_st = StageTimes(
        model_pair="small",
        modes={
            "full": kv,
            "int8": kv,
            "int4": kv,
            "scout": ModeStages(prefill=StageCost(fixed_s=0.1), decode=StageCost(fixed_s=1.4)),
            "local": ModeStages(generate=StageCost(fixed_s=3.0)),
        },
    )
    out = []
    for i, (pair, table, st) in enumerate([("large", large, large_st)] * 2 + [("small", small, small_st)] * 2):
        request = PlanRequest(context_tokens=1000, deadline_s=2.2, model_pair=pair, request_id=f"r{i}")
        out.append(DeviceDemand(f"dev{i}-{pair}", request, table, st))
    return out


def test_study_four_devices_fifty_mbit_equal_split_vs_model_aware() -> None:
    demands, capacity = study_scenario(), 50e6
    eq = allocate_equal(demands, capacity)
    # 12.5 Mbit/s each: large devices need 20 Mbit/s even at INT4 and cannot answer locally in time.
    assert eq.met == 2 and [d.plan.feasible for d in eq.devices] == [False, False, True, True]
    assert [d.plan.mode for d in eq.devices][2:] == ["int4", "int4"]
    ma = allocate_model_aware(demands, capacity)
    assert ma.met == 4 and ma.met_fraction == 1.0
    modes = [d.plan.mode for d in ma.devices]
    assert modes[:2] == ["int4", "int4"] and sorted(modes[2:]) == ["int4", "scout"]  # 20 + 20 + 8 + ~0 <= 50
    assert min(d.share_bps for d in ma.devices[:2]) > max(d.share_bps for d in ma.devices[2:] if d.plan.mode == "scout")
    assert (ma.met, ma.total_quality) == (
        allocate_brute_force(demands, capacity)[0],
        pytest.approx(0.95 * 2 + 0.97 + 0.90),
    )
    prop = allocate_proportional(demands, capacity)  # 50 * 20/56 = 17.9 Mbit/s for a large device: still short
    assert prop.met == 2


# ----------------------------------------------------------------------------------------------------------------
# simulation
# ----------------------------------------------------------------------------------------------------------------
def test_request_stream_is_seeded_and_respects_choices() -> None:
    cfg = StreamConfig(
        n_requests=50, mean_interarrival_s=2.0, context_tokens=[500, 1000], deadline_s=[1.0, 2.0], seed=3
    )
    a, b = request_stream(cfg), request_stream(cfg)
    assert a == b and a != request_stream(cfg.model_copy(update={"seed": 4}))
    assert a[0].t_s == 0.0 and all(x.t_s <= y.t_s for x, y in itertools.pairwise(a))
    assert {r.context_tokens for r in a} == {500, 1000} and {r.deadline_s for r in a} == {1.0, 2.0}
    fixed = request_stream(cfg.model_copy(update={"arrivals": "fixed"}))
    assert [r.t_s for r in fixed[:3]] == [0.0, 2.0, 4.0]


def test_constant_link_predictions_are_exact() -> None:
    table, stages = make_table(), make_stages()
    link = StepProcess([0.0], [8e6], 1000.0, loop=True)
    reqs = [SimRequest(request_id=f"r{i}", t_s=10.0 * i, context_tokens=1000, deadline_s=1.5) for i in range(5)]
    res = simulate(reqs, link, table, stages, parse_policy("adaptive:last"))
    for rec in res.records:
        assert rec.point == "full" and rec.met
        assert rec.actual_time_s == pytest.approx(rec.expected_time_s, abs=1e-9)
    assert res.summary.met_pct == 100.0 and res.summary.mispredicted_pct == 0.0


def test_drop_is_a_miss_that_never_finishes_and_the_oracle_avoids_it() -> None:
    table, stages = make_table(), make_stages()
    reqs = [SimRequest(request_id="r0", t_s=0.0, context_tokens=1000, deadline_s=1.5)]
    cmp_ = compare(reqs, link_that_drops(), table, stages, [parse_policy("adaptive:last")])
    adaptive, oracle = cmp_.results
    rec = adaptive.records[0]
    assert (rec.point, rec.planned_feasible, rec.met) == ("full", True, False)
    assert math.isinf(rec.actual_time_s) and adaptive.summary.never_finished == 1
    assert adaptive.summary.mispredicted_pct == 100.0
    assert oracle.records[0].point == "mixed" and oracle.records[0].met
    assert cmp_.gaps_to_oracle["adaptive:last"]["met_pct"] == 100.0
    assert cmp_.gaps_to_oracle["adaptive:last"]["mean_quality"] == pytest.approx(0.99)
    assert "Infinity" in cmp_.model_dump_json()


def test_a_transfer_that_never_finishes_blocks_the_uplink() -> None:
    table, stages = make_table(), make_stages()
    reqs = [
        SimRequest(request_id="a", t_s=0.0, context_tokens=1000, deadline_s=1.5),
        SimRequest(request_id="b", t_s=5.0, context_tokens=1000, deadline_s=2.0),
    ]
    cmp_ = compare(reqs, link_that_drops(), table, stages, [parse_policy("static:full"), parse_policy("adaptive:last")])
    static, adaptive, oracle = cmp_.results
    assert math.isinf(static.records[1].transfer_start_s) and not static.records[1].met  # type: ignore[arg-type]
    # The probes report the outage (0 bit/s): the adaptive policy answers locally, as does the oracle.
    assert (adaptive.records[1].point, adaptive.records[1].met) == ("local", True)
    assert (oracle.records[1].point, oracle.records[1].met) == ("local", True)


def test_goodput_of_finished_transfers_feeds_the_estimator() -> None:
    table, stages = make_table(), make_stages()
    link = StepProcess([0.0, 10.0], [16e6, 4e6], 1000.0, loop=True)  # fast for 10 s, then slow
    reqs = [
        SimRequest(request_id="a", t_s=11.0, context_tokens=1000, deadline_s=5.0),
        SimRequest(request_id="b", t_s=30.0, context_tokens=1000, deadline_s=5.0),
    ]
    res = simulate(reqs, link, table, stages, parse_policy("adaptive:last"), SimConfig(probe_interval_s=None))
    assert res.records[0].estimate_bps == 16e6  # only the configured rate at t = 0 so far
    assert res.records[0].point == "full"
    assert res.records[1].estimate_bps == pytest.approx(4e6)  # the goodput of the first transfer


def test_oracle_meets_every_deadline_a_policy_meets_without_queueing() -> None:
    table, stages = make_table(), make_stages()
    process = MarkovBandwidth(study_preset(seed=9, step_s=0.5))
    stream = StreamConfig(
        n_requests=60, mean_interarrival_s=20.0, arrivals="fixed", context_tokens=[500, 1000, 2000],
        deadline_s=[0.8, 1.2, 2.0], seed=9,
    )  # fmt: skip
    reqs = request_stream(stream)
    policies = [parse_policy(p) for p in ("adaptive:ewma", "adaptive:harmonic:3", "robust:0.2", "static:int8")]
    cmp_ = compare(reqs, process, table, stages, policies, SimConfig(probe_interval_s=0.5, bootstrap=200))
    oracle = next(r for r in cmp_.results if r.policy.kind == "oracle")
    for res in cmp_.results:
        assert res.summary.n == 60
        for mine, best in zip(res.records, oracle.records, strict=True):
            assert best.met or not mine.met, (res.policy.name, mine.request_id)
        assert cmp_.gaps_to_oracle[res.policy.name]["met_pct"] >= 0
        lo, hi = res.summary.met_ci_pct
        assert lo <= res.summary.met_pct <= hi
    static = next(r for r in cmp_.results if r.policy.kind == "static")
    assert set(static.summary.mode_counts) == {"int8"}
    again = compare(reqs, MarkovBandwidth(study_preset(seed=9, step_s=0.5)), table, stages, policies,
                    SimConfig(probe_interval_s=0.5, bootstrap=200))  # fmt: skip
    assert again.model_dump_json() == cmp_.model_dump_json()  # a pure function of the inputs


def test_parse_policy() -> None:
    assert parse_policy("robust:0.2:30").quantile == 0.2 and parse_policy("robust:0.2:30").window == 30
    assert parse_policy("static:int4@0.5").point == "int4@0.5"
    assert parse_policy("adaptive").estimator == "ewma"
    for bad in ("greedy", "adaptive:nope", "static", "oracle:1"):
        with pytest.raises(ValueError):
            parse_policy(bad)


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------
def cli() -> typer.Typer:
    from scout_cli.commands.policy import register

    app = typer.Typer()
    bench = typer.Typer()
    app.add_typer(bench, name="bench")
    register(app, bench)
    return app


SYNTHETIC = Path(__file__).resolve().parents[1] / "fixtures" / "traces" / "synthetic_lte_ul_walking.csv"


@pytest.fixture
def trace_root(tmp_path: Path, no_data_dir: Path) -> Path:
    """A data directory holding the synthetic uplink trace, for --data-dir; no data directory otherwise."""
    traces = tmp_path / "data-root" / "traces"
    traces.mkdir(parents=True)
    shutil.copy(SYNTHETIC, traces)
    return traces.parent


def test_cli_traces_list_json(trace_root: Path) -> None:
    result = CliRunner().invoke(cli(), ["traces", "list", "--json"])
    assert result.exit_code == 0, result.output
    packaged = json.loads(result.output)
    assert {r["direction"] for r in packaged} == {"downlink"} and len(packaged) == 2  # the two Lumos5G traces
    result = CliRunner().invoke(cli(), ["traces", "list", "--json", "--data-dir", str(trace_root)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == [SYNTHETIC.stem] + [r["name"] for r in packaged]  # uplink first
    up = CliRunner().invoke(cli(), ["traces", "list", "--direction", "uplink", "--data-dir", str(trace_root)])
    assert up.exit_code == 0 and "1 traces;" in up.output
    missing = CliRunner().invoke(cli(), ["traces", "list", "--data-dir", str(trace_root / "nope")])
    assert missing.exit_code == 2 and "--data-dir" in missing.output


def test_cli_simulate_requires_a_table() -> None:
    result = CliRunner().invoke(cli(), ["simulate", "--trace", "markov", "--transfer-only"])
    assert result.exit_code == 2
    assert "--table is required" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_cli_simulate_writes_reports(tmp_path: Path, trace_root: Path) -> None:
    table_path = make_table().save(tmp_path / "ops.json")
    stages_path = make_stages().save(tmp_path / "stages.json")
    out = tmp_path / "out"
    args = [
        "simulate", "--trace", SYNTHETIC.stem, "--table", str(table_path), "--stages",
        str(stages_path), "--requests", "30", "--interarrival", "3", "--deadline", "1.0,2.0", "--context-tokens",
        "1000", "--policies", "adaptive:harmonic,static:int8,oracle", "--out", str(out), "--data-dir", str(trace_root),
    ]  # fmt: skip
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "simulation.json").read_text())
    names = [r["policy"]["name"] for r in data["comparison"]["results"]]
    assert names == ["adaptive:harmonic", "static:int8", "oracle"]
    assert SYNTHETIC.stem in data["meta"]["bandwidth"]
    assert "| adaptive:harmonic |" in (out / "simulation.md").read_text()
    assert (out / "simulation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_size_model_is_shared_by_points() -> None:
    size = SizeModel(bytes_per_context_token=3.0, fixed_bytes=5, bytes_per_token_group=2, token_group=4)
    p = OperatingPoint.from_size(
        size, mode="int4", quality_mean=0.5, quality_lo=0.4, quality_hi=0.6, n=10, model_pair=PAIR
    )
    assert p.size == size and p.bytes_for(10) == 5 + 30 + 2 * 3
    assert [size.size_bytes(n) for n in range(1, 6)] == [10, 13, 16, 19, 24]
