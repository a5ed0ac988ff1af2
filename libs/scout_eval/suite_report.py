"""The README of a simulation-suite run: how to regenerate it, what went in, and the answer to the study's question
with the numbers behind it. Generated, so that it never drifts from the JSON next to it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["digest", "headline", "write_readme"]

ALLOCATOR_TEXT = """\
`scout.policy.allocator` splits one uplink of capacity C among D devices for one round of simultaneous requests:

* **equal**: C / D each; every device then runs the deadline planner alone at its share.
* **proportional**: shares proportional to each device's full (bf16) KV bytes for its context; each plans alone.
* **model-aware**: shares and operating points chosen jointly. For device i and point j the smallest constant
  rate that meets the deadline is r_ij = 8 b_ij / (deadline_i - compute_ij) (0 for a point that sends nothing and
  whose compute fits; infinite when compute alone misses). Choosing j for i costs r_ij of C and is worth
  (1 deadline met, relative quality q_ij); "miss" costs 0. Maximising (deadlines met, then total quality, then
  least bandwidth) is a multiple-choice knapsack, solved exactly by dynamic programming over devices on a Pareto
  frontier of partial states (bandwidth used, value); a state another one dominates (no more bandwidth, at least
  the value) is dropped, which is safe because values add. Cost O(D * F * m * log(F * m)) for m points per
  device and a frontier of at most F states (F <= prod(m_i + 1), the problem being NP-hard in general);
  `max_frontier` (20,000) caps F by bucketing bandwidth, and the result is then marked inexact. Capacity left
  over is split among the transferring devices in proportion to their bytes.
"""


def _fails(v: dict[str, Any]) -> list[str]:
    out = []
    if not v["meets_at_least_as_many"]:
        out.append("fewer deadlines")
    if not v["at_least_answered_quality"]:
        noise = v.get("quality_noise")
        within = v.get("answered_within_noise")
        out.append(
            "lower answered quality"
            + (f" (by {-v['answered_quality_diff']:.3f}, within the static point's ±{noise:.3f} CI)" if within else "")
        )
    return out


def headline(summary: dict[str, Any]) -> list[str]:
    """Counts over bandwidth sources and adaptive estimators, per static baseline, and which table points could
    ever beat the baseline's quality (if none, any other choice can only lower the answered quality)."""
    traces = summary["traces"]
    points = {p["name"]: p for p in summary["points"]}
    lines = []
    for base in ("static:int8", "static:int4"):
        vs = [v for data in traces.values() for v in data["verdicts"] if v["static"] == base]
        if not vs:
            continue
        name = base.split(":", 1)[1]
        q = points[name]["relative"] if name in points else float("nan")
        better = [f"`{n}` ({100 * p['relative']:.1f} %)" for n, p in points.items() if p["relative"] > q]
        lines.append(
            f"- **vs {base}** ({len(vs)} comparisons: {len(traces)} sources x "
            f"{len({v['adaptive'] for v in vs})} estimators): at least as many deadlines in "
            f"{sum(v['meets_at_least_as_many'] for v in vs)}, no lower answered quality in "
            f"{sum(v['at_least_answered_quality'] for v in vs)} (lower but within the static point's CI in "
            f"{sum(bool(v.get('answered_within_noise')) and not v['at_least_answered_quality'] for v in vs)}), "
            f"no lower mean quality (miss = 0) in {sum(v['at_least_mean_quality'] for v in vs)}; both "
            f"(deadlines and answered quality) in "
            f"{sum(v['meets_at_least_as_many'] and v['at_least_answered_quality'] for v in vs)}. "
            f"`{name}` is measured at {100 * q:.1f} % of the reference; points measured higher: "
            + (", ".join(better) if better else "none, so every other choice lowers the answered quality")
            + "."
        )
    return lines


def digest(summary: dict[str, Any]) -> list[str]:
    """Per adaptive estimator and baseline: on how many traces the adaptive policy meets at least as many
    deadlines at no less answered quality, and for every trace where it does not, the numbers that say why."""
    traces = summary["traces"]
    rows: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for trace, data in traces.items():
        for v in data["verdicts"]:
            rows.setdefault((v["adaptive"], v["static"]), []).append((trace, v))
    lines = []
    for (adaptive, base), items in sorted(rows.items()):
        ok = [t for t, v in items if not _fails(v)]
        lines.append(
            f"- **{adaptive} vs {base}**: at least as many deadlines and no lower answered quality on "
            f"{len(ok)} of {len(items)} bandwidth sources" + (f" ({', '.join(ok)})" if ok else "") + "."
        )
        for trace, v in items:
            why = _fails(v)
            if not why:
                continue
            mine = next(r for r in traces[trace]["summaries"] if r["policy"] == adaptive)
            other = next(r for r in traces[trace]["summaries"] if r["policy"] == base)
            lines.append(
                f"  - {trace}: {' and '.join(why)}: met {mine['met_pct']:.1f} % vs {other['met_pct']:.1f} % "
                f"(Δ {v['met_diff_pp']:+.1f} pp [{v['met_diff_ci_pp'][0]:+.1f}, {v['met_diff_ci_pp'][1]:+.1f}]), "
                f"answered quality {mine['answered_quality']:.3f} vs {other['answered_quality']:.3f}, mean quality "
                f"(miss = 0) {mine['mean_quality']:.3f} vs {other['mean_quality']:.3f}; the adaptive policy "
                f"mispredicted {mine['mispredicted_pct']:.1f} % of requests (planned feasible, missed on the link), "
                f"fell back on {mine['fallback_pct']:.1f} %, and chose {_mix(mine['mode_counts'])}."
            )
    return lines


def _mix(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _oracle_gaps(summary: dict[str, Any]) -> list[str]:
    lines = []
    for trace, data in summary["traces"].items():
        parts = [
            f"{r['policy']} {r['gap_met_pp']:+.1f} pp / {r['gap_quality']:+.3f}"
            for r in data["summaries"]
            if r["policy"].startswith(("adaptive", "robust"))
        ]
        lines.append(f"- {trace}: " + "; ".join(parts))
    return lines


CAVEATS = """\
* **Compute was measured on a CPU, both ends on one machine** (`scout bench stages`; its report gives the dtype,
  threads and the load during the measurement): the cloud is not faster than the edge here, and scout's
  cloud re-prefill of the document with the larger model costs far more than decoding a received KV cache. A
  real deployment (edge SoC, cloud GPU) has other ratios; the *transfer only* variant shows the transport
  decision without any compute. Deadlines are *compute of full KV + slack*, so the slack is the uplink's budget.
* **Planning happens when the edge's prefill is done** (`SimConfig.plan_after_prefill`), as the pipeline plans;
  the estimator sees rate probes every second and the goodput of finished transfers. Compute of different
  requests is not queued (each request computes as if alone); the uplink is one FIFO link.
* **`local` and `text` are left out of planning.** With both ends on the same hardware, `local` (the edge answers
  from its own cache) has the quality of `full` KV (the same model answers; the tables use the same measurement)
  with no uplink and no encode step, so it dominates every KV mode of an edge->cloud pair: KV transfer only
  pays where the cloud decodes faster than the edge, which these stage times cannot show. `text` carries no
  document bytes (the document is assumed to be in the cloud store, as scout assumes too) and would be the
  reference quality for free.
* **Qualities are measured means of partial runs** (each point's n and run are in the tables); several KV modes
  of the same model differ by less than their CIs, and the planner ranks by the mean, so "higher quality" among
  them is often noise (the verdict tables say when a quality difference is within the static point's CI). The
  reference may come from a run of another compute dtype than the points (see the source column).
* **Sizes count the whole hand-off cache** when `--extra-tokens` gives the prompt tokens around the context
  (template and question; the median over the saved SQuAD v2 samples is in `reports/eval/latency/`); the blob's
  JSON header and the message envelope are not in them.
* **The multi-device split is static per round**: a device that finishes early does not hand its share on.
"""


def write_readme(
    out: Path,
    summaries: dict[str, dict[str, Any]],
    *,
    command: str,
    files: Sequence[str],
    notes: Sequence[str],
    stage_sources: Sequence[str] = (),
) -> Path:
    """``out/README.md`` from the suite summaries (``measured`` and, if run, ``transfer_only``)."""
    first = next(iter(summaries.values()))
    lines = [
        "# Policy simulation suite",
        "",
        "Regenerate everything in this folder, in order: the operating points from the saved evaluation runs "
        "(`scout eval report`, which also writes `reports/eval/operating_points/`; this suite rebuilds its tables "
        "from the same runs with `--eval-root`), the stage times (`scout bench stages`, resumable; the command is "
        "in each stage file's `source`), then:",
        "",
        f"    {command}",
        "",
        *[f"Stage times: {src}" for src in dict.fromkeys(stage_sources)],
        "",
        "Inputs (copies of the tables and stage times used are in `inputs/`):",
        "",
        *[f"- {f}" for f in files],
        *[f"- {n}" for n in notes],
        "",
        f"Bandwidth sources: {', '.join(first['traces'])}. Policies: {', '.join(first['policies'])}. Quality is "
        "relative to the pair's reference (the cloud model's full-context answer): *mean quality* counts a missed "
        "deadline as 0, *answered quality* averages the answers that arrive at all (the study's sense of "
        "quality). Every quality is an operating point's measured mean; the CIs below are over requests, not over "
        "the evaluation's examples (see each point's n).",
        "",
        "Layout: `<variant>/summary.{md,json,png}` (all traces), `<variant>/traces/<trace>.{md,json,png}` (per "
        "policy, with the bandwidth, each request's choice and hit or miss), for the variants below.",
        "",
    ]
    titles = {
        "measured": "Measured stage times",
        "transfer_only": "Transfer time only (zero compute: the transport decision alone)",
    }
    lines += ["## The question: adaptive vs static INT8 and INT4", ""]
    for variant, summary in summaries.items():
        lines += [f"### {titles.get(variant, variant)}", "", *headline(summary), "", "Per estimator:", ""]
        lines += [*digest(summary), "", "Gap to the oracle (met pp / mean quality):", ""]
        lines += [*_oracle_gaps(summary), ""]
    for variant in summaries:
        text = (out / variant / "summary.md").read_text(encoding="utf-8")
        lines += [f"## {titles.get(variant, variant)}: tables", "", f"![summary]({variant}/summary.png)", "", text]
    lines += ["## Multi-device allocation: algorithm and cost", "", ALLOCATOR_TEXT, "## Caveats", "", CAVEATS]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
