"""One run's statistics, from its saved samples: what the report renders and the operating-point tables read.

Both `scout_eval.report` (tables and plots) and `scout_eval.op_tables` (the planner's tables) start from
`summarise_run`; it lives here, below both, so neither imports the other to get it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from scout.stats import Summary, adjust_pvalues, paired_t_test, relative_ci, wilcoxon_test
from scout_eval.run_folder import RUN_FILE, read_samples

RETENTION = re.compile(r"^(?P<name>.+)@(?P<r>[0-9.]+)$")


def _values(rows: list[dict[str, Any]], cond: str, key: str) -> np.ndarray:
    return np.array([float(r["conditions"][cond][key]) for r in rows if cond in r["conditions"]], dtype=np.float64)


def _paired_tests(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Difference of means and paired t / Wilcoxon p-values (NaN below two pairs, where no test is defined)."""
    out = {"diff": float(a.mean() - b.mean()), "t": math.nan, "p_t": math.nan, "p_wilcoxon": math.nan}
    if a.size >= 2:
        out["t"], out["p_t"] = paired_t_test(a, b)
        out["p_wilcoxon"] = wilcoxon_test(a, b)[1]
    return out


def _bonferroni(entries: list[dict[str, float]]) -> None:
    tested = [e for e in entries if not math.isnan(e["p_t"])]
    for e, adj in zip(tested, adjust_pvalues([e["p_t"] for e in tested], "bonferroni") if tested else [], strict=True):
        e["p_t_bonferroni"] = adj


def summarise_run(run_dir: Path) -> dict[str, Any]:
    """Per condition: every numeric field's mean [95 % CI], and against the reference its relative quality and
    paired tests (Bonferroni over the run's conditions); for a scout run, also scout@r against own@r."""
    info = json.loads((run_dir / RUN_FILE).read_text())
    rows = read_samples(run_dir)
    metric, ref = info["metric"], info["reference"]
    conditions: list[str] = []
    for r in rows:
        for c in r["conditions"]:
            if c not in conditions:
                conditions.append(c)
    complete = [r for r in rows if all(c in r["conditions"] for c in conditions)]
    out: dict[str, Any] = {
        "run": run_dir.name,
        "experiment": info["experiment"],
        "metric": metric,
        "reference": ref,
        "n": len(complete),
        "command": info.get("command", ""),
        "models": info.get("models", {}),
        "updated": info.get("updated", ""),
        "conditions": {},
    }
    if not complete:
        return out
    ref_vals = _values(complete, ref, metric) if ref in conditions else None
    tested: list[dict[str, float]] = []
    for cond in conditions:
        vals = _values(complete, cond, metric)
        entry: dict[str, Any] = {metric: Summary.of(vals).as_dict()}
        numeric = {k for k, v in complete[0]["conditions"][cond].items() if isinstance(v, (int, float))}
        for key in sorted(numeric - {metric}):
            entry[key] = Summary.of(_values(complete, cond, key)).as_dict()
        if ref_vals is not None and cond != ref:
            rel, lo, hi = relative_ci(vals, ref_vals)
            entry["relative"] = {"mean": rel, "lo": lo, "hi": hi}
            entry["vs_reference"] = _paired_tests(vals, ref_vals)
            tested.append(entry["vs_reference"])
        out["conditions"][cond] = entry
    _bonferroni(tested)
    if info["experiment"] == "scout":
        out["scout_vs_own"] = _paired_views(complete, metric, "scout", "own")
    return out


def _paired_views(rows: list[dict[str, Any]], metric: str, a: str, b: str) -> dict[str, Any]:
    """Per retention: condition `a@r` against `b@r` on the same samples (the study's Scout vs own table)."""
    views: dict[str, Any] = {}
    retentions = sorted({m["r"] for c in rows[0]["conditions"] if (m := RETENTION.match(c)) and m["name"] == a})
    for r in retentions:
        views[r] = _paired_tests(_values(rows, f"{a}@{r}", metric), _values(rows, f"{b}@{r}", metric))
    _bonferroni(list(views.values()))
    return views
