"""`scout eval report`: every table and plot, regenerated from the saved per-sample results.

For each run folder (see `runner.py`): per condition the primary metric's mean with a bootstrap 95 % CI, the
quality relative to the run's reference condition with a paired bootstrap CI, a paired t-test and a Wilcoxon
test against the reference (Bonferroni-corrected over the run's conditions), and the mean of every other
numeric field (bytes, overlap …). Experiment-specific views follow the study's layout (method x retention for
selection; edge-chosen vs cloud-own positions for Scout). Outputs: `report.md`, `summary.json` and PNG plots in
the run folder, an index `README.md` at the root, and the planner's operating-point tables per model pair in
`operating_points/` (`scout_eval.op_tables`). Nothing here is typed in: every number is computed; the per-run
statistics themselves are `scout_eval.summary`'s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from scout_eval.op_tables import write_operating_points
from scout_eval.run_folder import iter_runs
from scout_eval.summary import RETENTION, summarise_run


def _fmt(s: dict[str, Any] | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None or (isinstance(s["mean"], float) and math.isnan(s["mean"])):
        return "—"
    return f"{s['mean']:.{digits}f} [{s['lo']:.{digits}f}, {s['hi']:.{digits}f}]"


def _p(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else (f"{x:.3g}")


def render_run(summary: dict[str, Any]) -> str:
    metric, ref = summary["metric"], summary["reference"]
    lines = [
        f"# {summary['experiment']}: {summary['run']}",
        "",
        f"n = {summary['n']} samples · metric: {metric} (mean [95 % bootstrap CI]) · reference: `{ref}`",
        f"Command: `{summary['command']}` · updated {summary['updated']}",
        "",
    ]
    models = summary.get("models", {})
    for role, ident in models.items():
        if isinstance(ident, dict):
            sha = ident.get("gguf_sha256")
            lines.append(
                f"- {role}: {ident.get('name')} ({ident.get('source')}, fingerprint {ident.get('fingerprint')}"
                + (f", GGUF sha256 {sha[:16]}…" if sha else "")
                + ")"
            )
    lines += [
        "",
        "| condition | " + metric + " | relative to reference (%) | Δ vs reference | p (t, Bonferroni) "
        "| p (Wilcoxon) | other |",
        "|---|---|---|---|---|---|---|",
    ]
    for cond, e in summary["conditions"].items():
        vs = e.get("vs_reference", {})
        other = "; ".join(
            f"{k} {_fmt(v, 2)}"
            for k, v in e.items()
            if k not in (metric, "relative", "vs_reference") and isinstance(v, dict) and "mean" in v
        )
        rel = _fmt(e.get("relative"), 1)
        diff = f"{vs['diff']:+.3f}" if vs else "—"
        lines.append(
            f"| `{cond}` | {_fmt(e[metric])} | {rel} | {diff} | {_p(vs.get('p_t_bonferroni'))} "
            f"| {_p(vs.get('p_wilcoxon'))} | {other} |"
        )
    if summary["experiment"] == "selection":
        lines += ["", "## Method x retention (" + metric + ")", "", *_pivot(summary)]
    if "scout_vs_own" in summary:
        lines += [
            "",
            "## Edge-selected (scout) vs cloud-own positions, paired",
            "",
            "| retention | overlap | scout | own | Δ (scout − own) | p (t, Bonferroni) | p (Wilcoxon) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r, v in summary["scout_vs_own"].items():
            c = summary["conditions"]
            lines.append(
                f"| {r} | {_fmt(c[f'scout@{r}'].get('overlap'))} | {_fmt(c[f'scout@{r}'][metric])} | "
                f"{_fmt(c[f'own@{r}'][metric])} | {v['diff']:+.3f} | {_p(v.get('p_t_bonferroni'))} | "
                f"{_p(v['p_wilcoxon'])} |"
            )
    return "\n".join(lines) + "\n"


def _pivot(summary: dict[str, Any]) -> list[str]:
    metric = summary["metric"]
    table: dict[str, dict[str, str]] = {}
    rets: list[str] = []
    for cond, e in summary["conditions"].items():
        m = RETENTION.match(cond)
        if not m:
            continue
        table.setdefault(m["name"], {})[m["r"]] = _fmt(e[metric])
        if m["r"] not in rets:
            rets.append(m["r"])
    rets.sort(key=float)
    lines = ["| method | " + " | ".join(f"{r}" for r in rets) + " |", "|---|" + "---|" * len(rets)]
    lines += [f"| {name} | " + " | ".join(row.get(r, "—") for r in rets) + " |" for name, row in table.items()]
    return lines


def plot_run(summary: dict[str, Any], path: Path) -> bool:
    """Quality vs retention (selection, scout) or quality per condition with CIs (others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summary["metric"]
    conds = summary["conditions"]
    if not conds:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    flat = []
    for cond, e in conds.items():
        m = RETENTION.match(cond)
        if m:
            series.setdefault(m["name"], []).append((float(m["r"]), e[metric]))
        else:
            flat.append((cond, e[metric]))
    for name, pts in series.items():
        pts.sort()
        xs = [x for x, _ in pts]
        ys = [s["mean"] for _, s in pts]
        err = [[s["mean"] - s["lo"] for _, s in pts], [s["hi"] - s["mean"] for _, s in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    for i, (cond, s) in enumerate(flat):
        if series:
            ax.axhline(s["mean"], linestyle="--", color=f"C{(len(series) + i) % 10}", label=cond)
        else:
            ax.bar(i, s["mean"], yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]], capsize=4, label=cond)
    if series:
        ax.set_xlabel("retention")
    else:
        ax.set_xticks(range(len(flat)), [c for c, _ in flat])
    ax.set_ylabel(f"{metric} (95 % CI)")
    ax.set_title(f"{summary['experiment']} — {summary['run']} (n={summary['n']})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_reports(root: Path) -> list[dict[str, Any]]:
    """Regenerate every run's report under `root` and the index."""
    summaries = []
    for run_dir in iter_runs(root):
        s = summarise_run(run_dir)
        (run_dir / "summary.json").write_text(json.dumps(s, indent=2))
        (run_dir / "report.md").write_text(render_run(s))
        plot_run(s, run_dir / "plot.png")
        summaries.append(s)
    index = [
        "# Evaluation results",
        "",
        "Regenerate every table and plot: `scout eval report`. Each run folder holds `run.json` (command, models,",
        "sample ids), `samples.jsonl` (per-sample predictions and scores), `report.md`, `summary.json`, `plot.png`.",
        "",
        "| experiment | run | n | reference | report |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        rel = f"{s['experiment']}/{s['run']}/report.md"
        index.append(f"| {s['experiment']} | {s['run']} | {s['n']} | `{s['reference']}` | [{rel}]({rel}) |")
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("\n".join(index) + "\n")
    # The planner's operating-point tables (root/operating_points/), built from the summaries just computed.
    write_operating_points(root, summaries)
    return summaries
