"""Cross-run figures of `scout eval report`: the quality-vs-bytes Pareto frontier, the per-layer INT4 sensitivity,
and Scout's position overlap vs retention.

Why apart from each run's own plot: these are the study's summary figures, and each reads more than one
condition's numbers (bytes and quality together, every layer of a calibration, the overlap field rather than the
metric). Everything is drawn from `summary.json` contents and the committed bit plans; nothing is typed in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_RETENTION = re.compile(r"^(?P<name>.+)@(?P<r>[0-9.]+)$")
_PLAN_DIR = re.compile(r"^mixed([:@])reports/plans/")
"""A committed plan file's folder, left out of point labels (either spelling of a plan-file codec)."""


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_points(summary: dict[str, Any]) -> list[tuple[str, float, dict[str, float]]]:
    """``(condition, mean bytes, metric summary)`` for every condition that records the bytes it sends."""
    metric = summary["metric"]
    return [
        (cond, float(e["bytes"]["mean"]), e[metric])
        for cond, e in summary.get("conditions", {}).items()
        if "bytes" in e and metric in e
    ]


def frontier(points: list[tuple[str, float, dict[str, float]]]) -> list[str]:
    """Conditions no other condition beats on both axes (fewer or equal bytes and higher or equal mean quality,
    one of them strictly), ordered by bytes."""
    keep = []
    for name, b, q in points:
        dominated = any(
            (b2 <= b and q2["mean"] >= q["mean"]) and (b2 < b or q2["mean"] > q["mean"]) for _, b2, q2 in points
        )
        if not dominated:
            keep.append((b, name))
    return [name for _, name in sorted(keep)]


def plot_pareto(summary: dict[str, Any], path: Path) -> bool:
    points = pareto_points(summary)
    if len(points) < 2:
        return False
    plt = _plt()
    best = set(frontier(points))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, b, q in points:
        on = name in best
        ax.errorbar(
            b,
            q["mean"],
            yerr=[[q["mean"] - q["lo"]], [q["hi"] - q["mean"]]],
            fmt="o" if on else "x",
            color="C0" if on else "C7",
            capsize=3,
        )
        ax.annotate(_PLAN_DIR.sub(r"mixed\1", name), (b, q["mean"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    line = sorted((b, q["mean"]) for name, b, q in points if name in best)
    ax.plot([x for x, _ in line], [y for _, y in line], color="C0", alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent (mean per request, log scale)")
    ax.set_ylabel(f"{summary['metric']} (95 % CI)")
    ax.set_title(f"quality vs bytes — {summary['experiment']}/{summary['run']} (n={summary['n']}; o = frontier)",
                 fontsize=9)  # fmt: skip
    ax.grid(True, alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def layer_sensitivity(plan_path: Path) -> tuple[str, list[float]] | None:
    """The calibration's single-layer KL per layer (only that layer quantized), from a committed bit plan."""
    ev = json.loads(plan_path.read_text()).get("evidence", {})
    layers = sorted(ev.get("layers", []), key=lambda e: int(e["layer"]))
    if not layers:
        return None
    return str(ev.get("model", plan_path.stem)), [float(e["kl_mean"]) for e in layers]


def plot_layer_sensitivity(plans_dir: Path, path: Path) -> bool:
    plans = [(p, s) for p in sorted(plans_dir.glob("*.json")) if (s := layer_sensitivity(p)) is not None]
    if not plans:
        return False
    plt = _plt()
    fig, axes = plt.subplots(len(plans), 1, figsize=(8, 1.9 * len(plans)), squeeze=False)
    for ax, (p, (_model, kl)) in zip(axes[:, 0], plans, strict=True):
        top = max(range(len(kl)), key=kl.__getitem__)
        ax.bar(range(len(kl)), kl, color=["C3" if i == top else "C0" for i in range(len(kl))])
        ax.set_yscale("log")
        ax.set_ylabel("KL", fontsize=7)
        ax.set_title(f"{p.stem}: next-token KL with only layer L at 4 bits (most sensitive: {top})", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_overlap(summary: dict[str, Any], path: Path) -> bool:
    """Scout: the edge's kept set's overlap with the cloud's own, and both answers' quality, vs retention."""
    metric, conds = summary["metric"], summary.get("conditions", {})
    rows = []
    for cond, e in conds.items():
        m = _RETENTION.match(cond)
        if m and m["name"] == "scout" and "overlap" in e:
            own = conds.get(f"own@{m['r']}", {}).get(metric)
            rows.append((float(m["r"]), e["overlap"], e[metric], own))
    if not rows:
        return False
    rows.sort(key=lambda r: r[0])
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    xs = [r for r, *_ in rows]

    def bars(ax: Any, stats: list[dict[str, float]], label: str) -> None:
        ys = [s["mean"] for s in stats]
        ax.errorbar(xs, ys, yerr=[[y - s["lo"] for y, s in zip(ys, stats, strict=True)],
                                  [s["hi"] - y for y, s in zip(ys, stats, strict=True)]],
                    marker="o", capsize=3, label=label)  # fmt: skip

    bars(a1, [o for _, o, _, _ in rows], "overlap")
    a1.set_xlabel("retention")
    a1.set_ylabel("overlap with the cloud's own set")
    bars(a2, [s for _, _, s, _ in rows], "scout (edge's positions)")
    if all(own is not None for *_, own in rows):
        bars(a2, [own for *_, own in rows], "own (cloud's positions)")
    full = conds.get("cloud_full", {}).get(metric)
    if full:
        a2.axhline(full["mean"], linestyle="--", color="C7", label="cloud, full context")
    a2.set_xlabel("retention")
    a2.set_ylabel(f"cloud {metric} (95 % CI)")
    a2.legend(fontsize=7)
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Scout — {summary['run']} (n={summary['n']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_figures(root: Path, summaries: list[dict[str, Any]], plans_dir: Path | None = None) -> list[Path]:
    """Every cross-run figure under ``root/figures`` with an index; returns the files written."""
    plans_dir = plans_dir if plans_dir is not None else root.parent / "plans"
    out = root / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, str]] = []
    for s in summaries:
        stem = f"{s['experiment']}__{s['run']}"
        if plot_pareto(s, out / f"pareto__{stem}.png"):
            written.append((out / f"pareto__{stem}.png", f"quality vs bytes, {s['experiment']}/{s['run']}"))
        if s["experiment"] == "scout" and plot_overlap(s, out / f"overlap__{stem}.png"):
            written.append((out / f"overlap__{stem}.png", f"Scout overlap and quality vs retention, {s['run']}"))
    if plans_dir.is_dir() and plot_layer_sensitivity(plans_dir, out / "int4_layer_sensitivity.png"):
        written.append((out / "int4_layer_sensitivity.png", "per-layer INT4 sensitivity (calibration, every plan)"))
    lines = ["# Figures", "", "Regenerated by `scout eval report`.", ""]
    lines += [f"- [{p.name}]({p.name}): {what}" for p, what in written]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [p for p, _ in written]
