"""The claims checks on constructed runs: each verdict rule can come out every way it states."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scout_eval.claims import build_claims, write_claims
from scout_eval.run_folder import RESULTS_FILE, RUN_FILE


def _run(
    root: Path, experiment: str, name: str, conditions: dict[str, list[float]], reference: str, **extra: Any
) -> None:
    d = root / experiment / name
    d.mkdir(parents=True)
    (d / RUN_FILE).write_text(json.dumps({"experiment": experiment, "metric": "f1", "reference": reference}))
    n = len(next(iter(conditions.values())))
    with open(d / RESULTS_FILE, "w") as f:
        for i in range(n):
            conds = {
                c: {"f1": v[i], **{k: vals[i] for k, vals in extra.get(c, {}).items()}} for c, v in conditions.items()
            }
            f.write(json.dumps({"id": f"s{i}", "conditions": conds}) + "\n")


def _by_key(claims: list[Any]) -> dict[str, Any]:
    return {c.key: c for c in claims}


def test_verdicts_follow_the_rules(tmp_path: Path) -> None:
    root = tmp_path / "eval"
    rng = [0.1 * (i % 7) for i in range(40)]
    good = [min(1.0, x + 0.3) for x in rng]
    _run(
        root,
        "selection",
        "squad_v2__m",
        {"full": good, "q2c@0.25": good, "snapkv@0.25": rng, "h2o@0.25": good, "random@0.25": [x + 0.5 for x in good]},
        "full",
    )
    _run(
        root,
        "quantization",
        "squad_v2__m",
        {"bf16": good, "int8": good, "int4": [x * 0.5 for x in good], "int4-study": [x * 0.96 for x in good]},
        "bf16",
    )
    claims = _by_key(build_claims(root, tmp_path / "no-plans"))
    sel = {e.comparison: e.verdict for e in claims["q2c_vs_snapkv"].evidence}
    assert sel == {
        "q2c@0.25 vs snapkv@0.25": "held",
        "q2c@0.25 vs h2o@0.25": "no significant difference",
        "q2c@0.25 vs random@0.25": "reversed",
    }
    assert claims["int8_near_lossless"].verdict == "held"
    int4 = {e.comparison: e.verdict for e in claims["int4_fragile"].evidence}
    assert int4["int4 / bf16 ≥ 95 %"] == "did not hold"
    assert int4["int4-study / bf16 ≥ 95 %"] in {"held", "inconclusive"}
    assert claims["scout_overlap"].verdict == "not measured yet"


def test_scout_overlap_and_focusing_and_bottleneck(tmp_path: Path) -> None:
    root = tmp_path / "eval"
    base = [0.2 + 0.05 * (i % 5) for i in range(30)]
    _run(
        root,
        "scout",
        "squad_v2__a__b",
        {"cloud_full": base, "scout@0.5": [x + 0.2 for x in base], "own@0.5": base},
        "cloud_full",
        **{"scout@0.5": {"overlap": [0.8] * 30}},
    )
    plans = tmp_path / "plans"
    plans.mkdir()
    layers = [{"layer": i, "kl_mean": kl} for i, kl in enumerate([0.01, 0.5, 0.02])]
    evidence = {"layers": layers, "ranking": [1, 2, 0], "protected": [1], "n_prompts": 6, "quality_target_kl": 0.01}
    (plans / "m-int4-study.json").write_text(json.dumps({"evidence": evidence}))
    claims = _by_key(write_claims(root, plans))
    (ov,) = claims["scout_overlap"].evidence
    assert abs(ov.numbers["mean"] - 0.8) < 1e-9 and ov.n == 30
    assert claims["attention_focusing"].verdict == "held"
    (bn,) = claims["int4_bottleneck_layer"].evidence
    assert bn.verdict == "did not hold" and bn.numbers["top_layer"] == 1.0
    text = (root / "CLAIMS.md").read_text()
    assert "| attention_focusing | held |" in text
    assert json.loads((root / "claims.json").read_text())[0]["key"] == "q2c_vs_snapkv"


def test_plan_file_conditions_are_found_in_either_spelling(tmp_path: Path) -> None:
    """A calibrated plan condition is one the codec registry reads as a plan file: the committed reports'
    ``mixed:<plan.json>`` and the canonical ``mixed@<plan.json>`` both; a ``mixed:`` layer map is not one."""
    root = tmp_path / "eval"
    base = [0.1 * (i % 7) for i in range(40)]
    better = [x + 0.3 for x in base]
    conditions = {
        "bf16": better,
        "int4-study": base,
        "mixed:plans/a.json": better,
        "mixed@plans/b.json": better,
        "mixed:0=16": better,
    }
    _run(root, "quantization", "squad_v2__m", conditions, "bf16")
    claims = _by_key(build_claims(root, tmp_path / "no-plans"))
    compared = {e.comparison for e in claims["mixed_int4_recovers"].evidence}
    assert compared == {"mixed:plans/a.json vs int4-study", "mixed@plans/b.json vs int4-study"}
