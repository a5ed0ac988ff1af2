"""Cross-run figures: the frontier is the non-dominated set, and every figure is written from summaries alone."""

from __future__ import annotations

import json
from pathlib import Path

from scout_eval.figures import frontier, pareto_points, write_figures


def _s(mean: float) -> dict[str, float]:
    return {"mean": mean, "lo": mean - 0.1, "hi": mean + 0.1, "n": 10}


def test_frontier_keeps_only_non_dominated_points() -> None:
    pts = [("a", 100.0, _s(0.5)), ("b", 200.0, _s(0.7)), ("c", 300.0, _s(0.6)), ("d", 100.0, _s(0.4))]
    assert frontier(pts) == ["a", "b"]
    assert frontier([("x", 1.0, _s(0.5)), ("y", 1.0, _s(0.5))]) == ["x", "y"]  # ties dominate nothing


def test_write_figures(tmp_path: Path) -> None:
    quant = {
        "experiment": "quantization",
        "run": "r1",
        "metric": "f1",
        "n": 10,
        "conditions": {c: {"f1": _s(q), "bytes": _s(b)} for c, q, b in [("bf16", 0.6, 1e6), ("int4", 0.55, 3e5)]},
    }
    scout = {
        "experiment": "scout",
        "run": "r2",
        "metric": "f1",
        "n": 10,
        "conditions": {
            "cloud_full": {"f1": _s(0.6)},
            "scout@0.5": {"f1": _s(0.5), "overlap": _s(0.8)},
            "own@0.5": {"f1": _s(0.55)},
        },
    }
    assert [c for c, _, _ in pareto_points(quant)] == ["bf16", "int4"]
    plans = tmp_path / "plans"
    plans.mkdir()
    ev = {"model": "m", "layers": [{"layer": i, "kl_mean": 0.01 * (i + 1)} for i in range(4)]}
    (plans / "m-int4.json").write_text(json.dumps({"evidence": ev}))
    written = write_figures(tmp_path / "eval", [quant, scout], plans)
    names = sorted(p.name for p in written)
    assert names == ["int4_layer_sensitivity.png", "overlap__scout__r2.png", "pareto__quantization__r1.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert "pareto__quantization__r1.png" in (tmp_path / "eval" / "figures" / "README.md").read_text()
