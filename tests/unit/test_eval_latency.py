"""`scout_eval.latency`: stage costs x operating-point bytes -> the per-mode latency breakdown (constructed inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scout.policy.operating_points import OperatingPoint, OperatingPointTable
from scout.policy.planner import ModeStages, StageCost, StageTimes
from scout_eval.latency import breakdown_rows, median_extra_tokens, write_latency

PAIR = "e->c"


def _point(mode: str, per_token: float, q: float, retention: float = 1.0, basis: str = "kept") -> OperatingPoint:
    return OperatingPoint(
        mode=mode,
        retention=retention,
        size_basis=basis,  # type: ignore[arg-type]
        bytes_per_context_token=per_token,
        fixed_bytes=100,
        quality_mean=q,
        quality_lo=q - 0.1,
        quality_hi=q + 0.1,
        n=40,
        model_pair=PAIR,
    )


def _inputs() -> tuple[OperatingPointTable, StageTimes]:
    table = OperatingPointTable(
        points=[_point("full", 1000.0, 0.8), _point("int4", 250.0, 0.6), _point("scout", 0.125, 0.4, 0.5, "context")]
    )
    kv = ModeStages(prefill=StageCost(fixed_s=1.0, per_token_s=0.01), decode=StageCost(fixed_s=0.5))
    scout = ModeStages(
        prefill=StageCost(fixed_s=1.0, per_token_s=0.01), decode=StageCost(fixed_s=2.0, per_token_s=0.02)
    )
    return table, StageTimes(model_pair=PAIR, modes={"full": kv, "int4": kv, "scout": scout})


def test_each_stage_and_the_transfer_add_up() -> None:
    table, stages = _inputs()
    rows = breakdown_rows(table, stages, context_tokens=100, extra_tokens=10, rates_bps=[1e6, 8e6])
    assert [r["point"] for r in rows] == ["full", "int4", "scout@0.5"]  # largest first
    full, _, scout = rows
    assert full["bytes"] == 100 + 1000 * 110  # the prompt tokens around the context travel too
    assert scout["bytes"] == 100 + 13  # the position bitmap indexes the context only
    assert full["seconds"]["prefill"] == pytest.approx(2.0) and full["compute_s"] == pytest.approx(2.5)
    assert full["transfer_s"]["8e+06"] == pytest.approx(110_100 / 1e6)
    assert full["total_s"]["1e+06"] == pytest.approx(2.5 + 8 * 110_100 / 1e6)
    assert scout["compute_s"] == pytest.approx(2.0 + 4.0)
    assert full["relative_quality"] == pytest.approx(1.0) and scout["relative_quality"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        breakdown_rows(table, stages, context_tokens=0)
    with pytest.raises(ValueError):
        breakdown_rows(table, stages, context_tokens=10, rates_bps=[0.0])


def test_points_without_stage_times_are_left_out() -> None:
    table, stages = _inputs()
    only_kv = StageTimes(model_pair=PAIR, modes={"full": stages.modes["full"]})
    assert [r["point"] for r in breakdown_rows(table, only_kv, context_tokens=50)] == ["full"]


def test_write_latency_joins_tables_and_stage_files_by_name(tmp_path: Path) -> None:
    table, stages = _inputs()
    root, stages_dir = tmp_path / "eval", tmp_path / "stages"
    table.save(root / "operating_points" / "e__c.json")
    table.save(root / "operating_points" / "e__c__mmlu.json")
    stages.save(stages_dir / "e__c.json")
    run = root / "quantization" / "squad_v2__e__fp32"
    run.mkdir(parents=True)
    metas = [{"prompt_tokens": 130, "context_tokens": 100}, {"prompt_tokens": 60, "context_tokens": 40}, {}]
    (run / "samples.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "meta": m}) + "\n" for i, m in enumerate(metas))
    )
    assert median_extra_tokens(root, "squad_v2", "e") == 24  # median of 29 and 19
    status = write_latency(root, stages_dir, context_tokens=200)
    assert status["e__c.json"] == "ok" and status["e__c__mmlu.json"].startswith("skipped")
    data = json.loads((root / "latency" / "latency.json").read_text())
    (section,) = data["sections"]
    assert section["extra_tokens"] == 24 and section["rows"][0]["bytes"] == 100 + 1000 * 224
    text = (root / "latency" / "README.md").read_text()
    assert "`e__c.json` at 200 context tokens (+24 prompt tokens)" in text and "| `int4` |" in text
    assert (root / "latency" / "e__c.png").stat().st_size > 1000  # the stacked-bar plot
