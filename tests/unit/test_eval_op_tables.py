"""Operating-point tables exported from saved evaluation runs (`scout_eval.op_tables`, `scout_eval.codec_modes`).

Every run folder here is constructed in tmp_path (run.json + samples.jsonl with chosen per-sample scores), so the
expected means, n, sources and sizes can be computed by hand; the model geometry is a tiny made-up one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import scout_eval.op_tables as eop
from scout.codec.quant import BitPlan, QuantSpec, quantize_cache
from scout.codec.wire import encode_blob
from scout.kvcache import KVCache
from scout.policy.operating_points import KVGeometry, OperatingPointTable, kv_size_model, positions_size_model
from scout_eval.codec_modes import codec_modes, parse_codec
from scout_eval.op_tables import (
    NoMeasuredPoints,
    build_pair_table,
    build_single_table,
    collect_runs,
    write_operating_points,
)
from scout_eval.report import write_reports

EDGE, CLOUD = "edge-s", "cloud-l"
GEOMETRY = {
    EDGE: KVGeometry(num_layers=2, kv_heads=1, head_dim=32),
    CLOUD: KVGeometry(num_layers=3, kv_heads=2, head_dim=32),
}


def geometry_of(name: str) -> KVGeometry:
    return GEOMETRY[name]


def make_run(
    root: Path,
    experiment: str,
    model: str,
    scores: dict[str, list[float]],
    *,
    cloud: str | None = None,
    n_planned: int | None = None,
    reference: str = "bf16",
    suffix: str = "",
    options: dict[str, Any] | None = None,
) -> Path:
    """A run folder: run.json as the runner writes it and one samples.jsonl row per example."""
    n = len(next(iter(scores.values())))
    name = "__".join(["squad_v2", model] + ([cloud] if cloud else [])) + suffix
    run_dir = root / experiment / name
    run_dir.mkdir(parents=True)
    info = {
        "experiment": experiment,
        "config": {
            "experiment": experiment,
            "dataset": "squad_v2",
            "model": model,
            "cloud_model": cloud,
            "n": n_planned or n,
            "options": options or {},
        },
        "command": f"scout eval run {experiment}",
        "metric": "f1",
        "reference": reference,
        "models": {},
    }
    (run_dir / "run.json").write_text(json.dumps(info))
    with open(run_dir / "samples.jsonl", "w") as f:
        for i in range(n):
            row = {"id": f"s{i}", "conditions": {c: {"f1": v[i], "pred": ""} for c, v in scores.items()}}
            f.write(json.dumps(row) + "\n")
    return run_dir


def study_root(root: Path) -> Path:
    make_run(
        root,
        "quantization",
        EDGE,
        {
            "bf16": [0.6, 0.4, 0.5, 0.5],
            "int8": [0.6, 0.4, 0.5, 0.3],
            "int4": [0.2, 0.4, 0.3, 0.3],
            "int2": [0.0, 0.1, 0.0, 0.1],
            "int4:keep=0": [0.5, 0.4, 0.5, 0.4],
            "delta-int4": [0.1, 0.1, 0.1, 0.1],
        },
        n_planned=10,
    )
    make_run(
        root,
        "selection",
        EDGE,
        {
            "full": [0.5, 0.5],  # n = 2 < 4: the quantization run's bf16 is the full point
            "q2c@0.25": [0.2, 0.3],
            "q2c@0.5": [0.4, 0.4],
            "snapkv@0.5": [0.9, 0.9],  # not the pipeline's selector: left out
        },
        reference="full",
    )
    make_run(
        root,
        "scout",
        EDGE,
        {
            "cloud_full": [0.8, 0.9, 0.7, 0.8, 0.8],
            "edge_full": [0.5, 0.4, 0.5, 0.5, 0.6],
            "scout@0.25": [0.6, 0.6, 0.5, 0.7, 0.6],
            "own@0.25": [0.9, 0.9, 0.9, 0.9, 0.9],
            "scout@0.5": [0.7, 0.8, 0.6, 0.8, 0.6],
            "own@0.5": [0.9, 0.9, 0.9, 0.9, 0.9],
        },
        cloud=CLOUD,
        reference="cloud_full",
    )
    make_run(root, "quantization", CLOUD, {"bf16": [1.0, 1.0, 1.0], "int8": [1.0, 1.0, 0.5]})
    return root


def test_codec_names_map_to_planner_modes() -> None:
    assert (parse_codec("bf16").mode, parse_codec("bf16").plan_name) == ("full", "bf16")
    assert parse_codec("int8").mode == "int8" and parse_codec("int2").plan_name == "int2"
    mixed = parse_codec("int4:keep=0")
    assert (mixed.mode, mixed.plan_name, mixed.overrides) == ("mixed", "mixed:0=16", {0: 16})
    assert parse_codec("int4-study:keep=0").mode == "mixed-study"
    assert parse_codec("int4-study").mode == "int4-study" and parse_codec("int8-token").mode == "int8-token"
    assert parse_codec("delta-int4") is None and parse_codec("nonsense") is None
    assert parse_codec("int4+zstd") is None and parse_codec("full") is None  # no size model / no codec at all
    layer_map = parse_codec("mixed:0=16,3=8")  # a layer map is the pipeline's mixed mode, never a plan file
    assert (layer_map.mode, layer_map.plan_name, layer_map.overrides) == ("mixed", "mixed:0=16,3=8", {0: 16, 3: 8})
    assert layer_map.plan_file == "" and parse_codec("mixed-study:0=16").axes == "-study"
    assert parse_codec("int8:keep=0").mode == "int8:keep=0"
    # Two codecs that would both be "mixed" keep their own names instead of colliding.
    modes = codec_modes(["int4:keep=0", "int4:keep=0,1", "int8"])
    assert {m.mode for m in modes.values()} == {"int4:keep=0", "int4:keep=0,1", "int8"}


def test_plan_files_read_the_same_in_both_spellings(tmp_path: Path) -> None:
    """``mixed@<plan.json>`` (canonical) and ``mixed:<plan.json>`` (the committed runs' spelling) are one plan-file
    mode: the same mode name, bit plan, quantizer and size; each keeps its own spelling as the table's plan name."""
    from scout.codec.mixed import MixedPlan
    from scout_eval.codec_modes import kv_point_size, plan_file_of

    spec = QuantSpec(4, axis_k="token", axis_v="token", group_size=16, symmetric=True)
    path = MixedPlan(BitPlan(4, {0: 16, 2: 8}), spec, "0" * 16, 3, "toy").save(tmp_path / "plans" / "toy.json")
    legacy, canonical = parse_codec(f"mixed:{path}"), parse_codec(f"mixed@{path}")
    assert legacy is not None and canonical is not None
    assert legacy.mode == canonical.mode == "mixed-toy"
    assert (legacy.plan_name, canonical.plan_name) == (f"mixed:{path}", f"mixed@{path}")
    assert legacy.plan_file == canonical.plan_file == str(path) == plan_file_of(f"mixed@{path}")
    assert legacy.bit_plan() == canonical.bit_plan() == BitPlan(4, {0: 16, 2: 8})
    assert legacy.quant_spec(16) == canonical.quant_spec(16) == spec and legacy.axes == ""
    geometry = KVGeometry(num_layers=3, kv_heads=2, head_dim=16)
    a, b = kv_point_size(geometry, legacy), kv_point_size(geometry, canonical)
    assert a == b and a.size_bytes(100) > 0  # the same payload; the plan names in the headers are equally long
    assert plan_file_of("mixed:0=16") is None and plan_file_of("int4") is None and plan_file_of("full") is None


def test_pair_table_from_constructed_runs(tmp_path: Path) -> None:
    runs = collect_runs(study_root(tmp_path))
    table = build_pair_table(runs, EDGE, CLOUD, geometry_of=geometry_of, min_examples=1)
    pair = f"{EDGE}->{CLOUD}"
    assert table.pairs() == [pair] and table.metric == "f1"
    names = sorted(p.name for p in table.points)
    assert names == sorted(
        ["full", "int8", "int4", "int2", "mixed", "full@0.25", "full@0.5", "scout@0.25", "scout@0.5", "local"]
    )
    # Reference: the cloud's full-context answer with the most examples (scout run, n = 5, over the cloud's own
    # quantization run, n = 3).
    assert table.reference[pair] == pytest.approx(0.8)
    detail = table.reference_detail[pair]
    assert detail.n == 5 and detail.source.startswith("scout/squad_v2__edge-s__cloud-l:cloud_full")
    # KV modes are the EDGE model's measurements.
    int8 = table.get("int8", 1.0)
    assert int8.quality_mean == pytest.approx(0.45) and int8.n == 4
    assert int8.quality_lo <= 0.45 <= int8.quality_hi
    assert int8.source == "quantization/squad_v2__edge-s:int8"
    assert "n=4 of 10, partial" in int8.notes and "partial" in table.source
    assert table.relative_quality(int8) == pytest.approx(0.45 / 0.8)
    full = table.get("full", 1.0)
    assert full.quality_mean == pytest.approx(0.5) and full.n == 4  # quantization (n=4) beats selection (n=2)
    assert "also measured in selection/squad_v2__edge-s:full (n=2)" in full.notes
    assert table.get("full", 0.25).quality_mean == pytest.approx(0.25)
    assert table.get("mixed").plan == "mixed:0=16"
    assert table.get("scout", 0.5).quality_mean == pytest.approx(0.7)
    local = table.get("local")
    assert local.quality_mean == pytest.approx(0.5) and local.bytes_for(1024) == 0 and local.n == 5
    with pytest.raises(KeyError):
        table.get("text")  # only on request: it would dominate every mode


def test_sizes_come_from_the_codec_and_the_wire(tmp_path: Path) -> None:
    runs = collect_runs(study_root(tmp_path))
    table = build_pair_table(runs, EDGE, CLOUD, geometry_of=geometry_of, message_bytes=32, min_examples=1)
    g = GEOMETRY[EDGE]
    for mode, plan in (("full", BitPlan.uniform(16)), ("int8", BitPlan.uniform(8)), ("int4", BitPlan(4, {0: 16}))):
        point = table.get("mixed" if plan.overrides else mode)
        spec = QuantSpec(plan.default)
        bare = kv_size_model(g, plan, spec)
        # The point is the codec's size plus the header the wire really writes.
        assert point.bytes_per_context_token == bare.bytes_per_context_token
        for n in (1024, 1000):
            gen = torch.Generator().manual_seed(n)
            kv = KVCache(
                keys=[torch.randn(1, n, 32, generator=gen).to(torch.bfloat16) for _ in range(2)],
                values=[torch.randn(1, n, 32, generator=gen).to(torch.bfloat16) for _ in range(2)],
                positions=torch.arange(n),
            )
            blob = encode_blob(
                quantize_cache(kv, plan, spec),
                model_fingerprint="f" * 16,
                original_seq_len=n,
                meta={"bit_plan": point.plan},
            )
            # Exact at the probe length; a few bytes of JSON digits apart elsewhere.
            assert abs(point.bytes_for(n) - len(blob)) <= (0 if n == 1024 else 16)
    # Retention shrinks KV points by the kept tokens; scout is the position-set bound.
    assert table.get("full", 0.25).bytes_for(1000) < table.get("full").bytes_for(1000) / 3
    assert table.get("scout", 0.25).bytes_for(1000) == positions_size_model(32).size_bytes(1000)


def test_missing_pair_or_reference_errors_clearly(tmp_path: Path) -> None:
    runs = collect_runs(study_root(tmp_path))
    with pytest.raises(NoMeasuredPoints, match="no measured operating point for other->cloud-l"):
        build_pair_table(runs, "other", CLOUD, geometry_of=geometry_of, min_examples=1)
    with pytest.raises(NoMeasuredPoints, match="no quantization, selection or combined run of other"):
        build_single_table(runs, "other", geometry_of=geometry_of, min_examples=1)
    only_edge = tmp_path / "only-edge"
    make_run(only_edge, "quantization", EDGE, {"bf16": [0.5, 0.5], "int8": [0.5, 0.4]})
    with pytest.raises(NoMeasuredPoints, match="no full-context answer of the cloud model cloud-l"):
        build_pair_table(collect_runs(only_edge), EDGE, CLOUD, geometry_of=geometry_of, min_examples=1)


def test_single_model_table_is_relative_to_its_own_full_answer(tmp_path: Path) -> None:
    table = build_single_table(collect_runs(study_root(tmp_path)), CLOUD, geometry_of=geometry_of, min_examples=1)
    assert table.pairs() == [f"{CLOUD}->{CLOUD}"] and table.reference[f"{CLOUD}->{CLOUD}"] == pytest.approx(1.0)
    assert table.relative_quality(table.get("int8")) == pytest.approx(2.5 / 3)
    # Sizes follow the cloud model's own geometry (3 layers x 2 heads x 32 dims x 2 (K, V) x 2 bytes + positions).
    assert table.get("full").bytes_per_context_token == 3 * 2 * 32 * 2 * 2 + 4


def test_write_reports_writes_the_tables_and_keeps_run_reports(tmp_path: Path, monkeypatch: Any) -> None:
    root = study_root(tmp_path / "eval")
    make_run(
        root,
        "scout",
        "ghost",
        {"cloud_full": [0.5], "scout@0.5": [0.4], "own@0.5": [0.5]},
        cloud=CLOUD,
        reference="cloud_full",
    )
    monkeypatch.setattr(eop, "geometry_of_model", geometry_of)  # the made-up models have no spec on disk
    monkeypatch.setattr(eop, "MIN_EXAMPLES", 1)  # the constructed runs are tiny
    summaries = write_reports(root)
    assert {s["run"] for s in summaries} >= {"squad_v2__edge-s", "squad_v2__edge-s__cloud-l"}
    for s in summaries:  # the per-run outputs are still written
        run_dir = root / s["experiment"] / s["run"]
        assert (run_dir / "report.md").is_file() and (run_dir / "summary.json").is_file()
    out = root / "operating_points"
    pair = OperatingPointTable.load(out / f"{EDGE}__{CLOUD}.json")
    assert pair.pairs() == [f"{EDGE}->{CLOUD}"] and len(pair.points) == 10
    assert OperatingPointTable.load(out / f"{EDGE}.json").pairs() == [f"{EDGE}->{EDGE}"]
    assert OperatingPointTable.load(out / f"{CLOUD}.json").reference[f"{CLOUD}->{CLOUD}"] == pytest.approx(1.0)
    # A scout pair whose edge has no KV runs still gets its scout points; one without a geometry is reported.
    ghost = OperatingPointTable.load(out / f"ghost__{CLOUD}.json")
    assert [p.name for p in ghost.points] == ["scout@0.5"]
    index = (out / "README.md").read_text()
    assert f"`{EDGE}__{CLOUD}.json`" in index and "relative %" in index
    # The same tables whether built from the summaries write_reports computed or from the samples again.
    again = write_operating_points(root, geometry_of=geometry_of)
    assert again[f"{EDGE}__{CLOUD}.json"] == "ok"
    assert OperatingPointTable.load(out / f"{EDGE}__{CLOUD}.json") == pair


def test_write_operating_points_reports_what_it_cannot_build(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(eop, "MIN_EXAMPLES", 1)
    root = tmp_path / "eval"
    make_run(
        root, "scout", EDGE, {"edge_full": [0.5, 0.4], "scout@0.5": [0.4, 0.4], "own@0.5": [0.5, 0.5]}, cloud=CLOUD
    )
    status = write_operating_points(root, geometry_of=geometry_of)
    assert status[f"{EDGE}__{CLOUD}.json"].startswith("skipped: no full-context answer of the cloud model")
    assert not (root / "operating_points" / f"{EDGE}__{CLOUD}.json").exists()
    assert "## Not built" in (root / "operating_points" / "README.md").read_text()


def test_retention_points_prefer_an_evict_selection_run(tmp_path: Path) -> None:
    """Evict (the kept positions' KV from the full prefill) is what a KV transfer sends; a masked re-read is
    another method, used only where no evict run exists, even with more examples."""
    root = tmp_path / "eval"
    make_run(root, "quantization", CLOUD, {"bf16": [1.0, 1.0]})
    make_run(root, "selection", EDGE, {"full": [0.5] * 4, "q2c@0.5": [0.1] * 4}, reference="full")
    evict = {"application": "evict"}
    make_run(root, "selection", EDGE, {"full": [0.5] * 2, "q2c@0.5": [0.3] * 2}, reference="full", suffix="__evict",
             options=evict)  # fmt: skip
    table = build_pair_table(collect_runs(root), EDGE, CLOUD, geometry_of=geometry_of, min_examples=1)
    half = table.get("full", 0.5)
    assert half.quality_mean == pytest.approx(0.3) and half.n == 2
    assert half.source == "selection/squad_v2__edge-s__evict:q2c@0.5"
    assert "also measured in selection/squad_v2__edge-s:q2c@0.5 (n=4)" in half.notes


def test_points_with_too_few_examples_are_left_out(tmp_path: Path) -> None:
    root = tmp_path / "eval"
    make_run(root, "quantization", CLOUD, {"bf16": [1.0] * 3})
    make_run(root, "quantization", EDGE, {"bf16": [0.5] * 3, "int8": [0.5] * 3})
    make_run(root, "selection", EDGE, {"full": [0.5], "q2c@0.5": [1.0]}, reference="full")  # one example
    runs = collect_runs(root)
    table = build_pair_table(runs, EDGE, CLOUD, geometry_of=geometry_of, min_examples=3)
    assert sorted(p.name for p in table.points) == ["full", "int8", "local"]
    assert "left out with fewer than 3 examples: full@0.5 (n=1)" in table.source
    with pytest.raises(NoMeasuredPoints, match="with 4 examples"):
        build_pair_table(runs, EDGE, CLOUD, geometry_of=geometry_of, min_examples=4)


def test_kv_runs_of_two_models_imply_the_smaller_one_as_edge(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(eop, "MIN_EXAMPLES", 1)
    root = tmp_path / "eval"
    make_run(root, "quantization", CLOUD, {"bf16": [1.0] * 2, "int8": [0.9] * 2})
    make_run(root, "quantization", EDGE, {"bf16": [0.5] * 2, "int8": [0.5] * 2})
    status = write_operating_points(root, geometry_of=geometry_of)
    assert status == {f"{CLOUD}.json": "ok", f"{EDGE}.json": "ok", f"{EDGE}__{CLOUD}.json": "ok"}
    table = OperatingPointTable.load(root / "operating_points" / f"{EDGE}__{CLOUD}.json")
    assert table.reference[f"{EDGE}->{CLOUD}"] == pytest.approx(1.0) and table.get("local").quality_mean == 0.5
