"""The simulation suite: every policy on the Markov preset and on measured uplink traces, and the multi-device cell,
in one reproducible run (``scout simulate-suite``).

Why a suite and not a handful of ``scout simulate`` calls: the question the study asks ("does the adaptive policy
meet at least as many deadlines as static INT8 and INT4, at no less quality?") has to be answered on every trace
with the same requests, the same measured operating points and the same stage times, and the answer has to be
regenerated when the measurements change. Everything here is a pure function of the inputs: the operating-point
table (`scout_eval.op_tables`), the stage times (`scout_cli.benchmarks.stages`), the traces (the data
directory's, else the packaged ones: `resolve_default_traces`), and the seeds.

Deadlines are set relative to the measured compute: ``deadline = compute of the base mode (full KV) at the context
length + slack``, one request stream drawing the slack from ``slacks_s``. The slack is the time the uplink may
take; with compute measured on a CPU (tens of seconds) a fixed absolute deadline would make the transfer
irrelevant, which is not the question. With ``transfer_only`` the compute is zero and the deadline is the slack.

The multi-device cell (Paper B §4: several devices on one shared uplink, each allocator's split) is
`scout_eval.suite_cell`; this module runs it over the suite's model pairs and reports it with the rest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scout.channel.process import BandwidthProcess
from scout.policy.operating_points import OperatingPointTable
from scout.policy.planner import StageTimes
from scout_eval.simulate import (
    Comparison,
    SimConfig,
    StreamConfig,
    compare,
    parse_policy,
    plot_comparison,
    render_markdown,
    request_stream,
)
from scout_eval.suite_cell import CellDevice, allocation_rows, run_cell_static, run_cell_trace

__all__ = [
    "DEFAULT_CELL_TRACE",
    "DEFAULT_TRACES",
    "ESTIMATOR_SPECS",
    "DefaultTraces",
    "SuiteConfig",
    "deadline_list",
    "default_policies",
    "make_process",
    "resolve_default_traces",
    "restrict_table",
    "run_suite",
    "verdicts",
]

DEFAULT_TRACES = [
    "markov",
    "nuwins_lte_ul_driving_run1",
    "nuwins_mmwave5g_nsa_ul_driving_run2",
    "mtu_5gnsa_ul_mobile_cork_171221",
    "umn_tmo_sa5g_ul_walking_run20070",
    "umn_vzw_mmwave5g_ul_walking_run196",
    "mahimahi_tmobile_lte_short_up",
]
"""The study's Markov chain and six measured uplink traces: LTE and 5G (NSA, SA, mmWave), driving and walking,
thin (~13 Mbit/s) to fast (~50 Mbit/s mean), one with 13 % outage samples. They are not redistributable, so they
are read from the data directory (``scout data import``); `resolve_default_traces` says what is used instead."""

DEFAULT_CELL_TRACE = "umn_tmo_nsa5g_ul_walking_run20086"


@dataclass(frozen=True)
class DefaultTraces:
    """The default traces that exist here, the multi-device cell's trace, and a note when they are stand-ins."""

    traces: list[str]
    cell_trace: str
    note: str = ""


def resolve_default_traces(data_dir: Path | str | None = None) -> DefaultTraces:
    """`DEFAULT_TRACES` (and `DEFAULT_CELL_TRACE`) as far as the data directory has them; with none of them, the
    Markov preset and the packaged traces (Lumos5G downlink, the only redistributable ones), saying so."""
    from scout.channel.traces import list_traces

    available = {info.name: info for info in list_traces(data_dir=data_dir)}
    measured = [name for name in DEFAULT_TRACES if name == "markov" or name in available]
    missing = [name for name in DEFAULT_TRACES if name not in measured]
    if len(measured) > 1:
        cell = DEFAULT_CELL_TRACE if DEFAULT_CELL_TRACE in available else measured[1]
        note = f"not in the data directory, left out: {', '.join(missing)}" if missing else ""
        return DefaultTraces(measured, cell, note)
    fallback = sorted(name for name in available if name not in DEFAULT_TRACES)
    if not fallback:
        note = "no traces here: the Markov preset only (`scout data import PATH` brings the measured ones)"
        return DefaultTraces(["markov"], DEFAULT_CELL_TRACE, note)
    shown = ", ".join(f"{name} ({available[name].direction})" for name in fallback)
    note = (
        "the measured uplink traces are not in the data directory (import them with `scout data import PATH`); "
        f"using the traces available here instead, as stand-ins: {shown}"
    )
    return DefaultTraces(["markov", *fallback], fallback[0], note)


ESTIMATOR_SPECS = ["last", "ewma", "harmonic", "quantile"]


class SuiteConfig(BaseModel):
    """What one suite run simulates (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    traces: list[str] = Field(default_factory=lambda: list(DEFAULT_TRACES), min_length=1)
    policies: list[str] | None = None
    context_tokens: int = Field(default=512, gt=0)
    extra_tokens: int = Field(default=0, ge=0)
    """Prompt tokens around the context (instruction, question) that KV modes send in full beside it."""
    slacks_s: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0], min_length=1)
    deadline_base: str = "full"
    requests: int = Field(default=200, gt=0)
    interarrival_s: float = Field(default=5.0, gt=0)
    seed: int = 0
    probe_interval_s: float = Field(default=1.0, gt=0)
    plan_after_prefill: bool = True
    exclude_modes: list[str] = Field(default_factory=lambda: ["local", "text"])
    bootstrap: int = Field(default=1000, ge=100)
    cell_devices: int = Field(default=4, ge=1)
    cell_capacity_bps: float = Field(default=50e6, gt=0)
    cell_slack_s: float = Field(default=1.0, gt=0)
    cell_trace: str = "umn_tmo_nsa5g_ul_walking_run20086"
    cell_rounds: int = Field(default=100, gt=0)


# ----------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------
def make_process(name: str, seed: int = 0) -> tuple[BandwidthProcess, str]:
    """``markov`` (the study preset, 1 s steps) or a trace name (replayed from its start, looped)."""
    from scout.channel.markov import MarkovBandwidth, study_preset
    from scout.channel.traces import TraceReplay, load_trace

    if name == "markov":
        cfg = study_preset(step_s=1.0, seed=seed)
        return MarkovBandwidth(cfg), f"Markov chain {cfg.name}, 1 s steps, seed {seed}"
    tr = load_trace(name)
    info = tr.info
    desc = (
        f"trace {tr.name} ({info.direction}, {info.link or info.generation}; mean {info.mean_mbps:.1f}, "
        f"p10 {info.p10_mbps:.1f}, p90 {info.p90_mbps:.1f} Mbit/s, {100 * info.zero_fraction:.1f} % zero), looped"
    )
    return TraceReplay(tr, loop=True), desc


def restrict_table(
    table: OperatingPointTable, pair: str, stages: StageTimes, exclude: Sequence[str]
) -> tuple[OperatingPointTable, list[str]]:
    """The pair's points a policy may choose: without ``exclude``d modes and without modes the stage times do not
    cover (each dropped point is named in the returned notes)."""
    keep, notes = [], []
    for p in table.for_pair(pair):
        if p.mode in exclude:
            notes.append(f"{p.name}: excluded from planning (mode {p.mode})")
        elif p.mode not in stages.modes:
            notes.append(f"{p.name}: no stage times for mode {p.mode} in {stages.model_pair}")
        else:
            keep.append(p)
    if not keep:
        raise ValueError(f"no operating point of {pair} is left to plan with ({'; '.join(notes)})")
    ref = {pair: table.reference_quality(pair)}
    detail = {pair: table.reference_detail[pair]} if pair in table.reference_detail else {}
    restricted = OperatingPointTable(
        metric=table.metric, source=table.source, reference=ref, reference_detail=detail, points=keep
    )
    return restricted, notes


def default_policies(table: OperatingPointTable, pair: str) -> list[str]:
    """Static full / int8 / int4 / mixed (the study's ``mixed-study`` where no KIVI mixed point exists) / the best
    scout point, adaptive with every estimator, robust, and the oracle — those the table can run."""
    names = {p.name for p in table.for_pair(pair)}
    out = [f"static:{m}" for m in ("full", "int8", "int4") if m in names]
    mixed = next((m for m in ("mixed", "mixed-study") if m in names), None)
    if mixed:
        out.append(f"static:{mixed}")
    scouts = [p for p in table.for_pair(pair) if p.mode == "scout"]
    if scouts:
        best = max(scouts, key=lambda p: (p.quality_mean, -p.retention))
        out.append(f"static:{best.name}")
    out += [f"adaptive:{e}" for e in ESTIMATOR_SPECS] + ["robust", "oracle"]
    return out


def deadline_list(stages: StageTimes, base_mode: str, context_tokens: int, slacks: Sequence[float]) -> list[float]:
    """``compute of base_mode at context_tokens + slack`` for every slack (see the module docstring)."""
    ms = stages.for_mode(base_mode)
    compute = ms.before_transfer_s(context_tokens) + ms.after_transfer_s(context_tokens)
    return [compute + s for s in slacks]


# ----------------------------------------------------------------------------------------------------------------
# single device: every trace
# ----------------------------------------------------------------------------------------------------------------
def _by_policy(comparison: Comparison) -> dict[str, Any]:
    return {r.policy.name: r for r in comparison.results}


def _policy_row(comparison: Comparison, name: str) -> dict[str, Any]:
    res = _by_policy(comparison)[name]
    s = res.summary
    gap = comparison.gaps_to_oracle[name]
    return {
        "policy": name,
        "n": s.n,
        "met_pct": s.met_pct,
        "met_ci_pct": list(s.met_ci_pct),
        "mean_quality": s.mean_quality,
        "mean_quality_ci": list(s.mean_quality_ci),
        "answered_quality": s.mean_quality_answered,
        "mean_bytes": float(np.mean([r.bytes for r in res.records])),
        "mode_counts": s.mode_counts,
        "mispredicted_pct": s.mispredicted_pct,
        "fallback_pct": s.fallback_pct,
        "gap_met_pp": gap["met_pct"],
        "gap_quality": gap["mean_quality"],
    }


def verdicts(
    comparison: Comparison,
    table: OperatingPointTable | None = None,
    pair: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every adaptive policy against static INT8 and INT4 on the same requests: the difference in deadlines met
    and in mean quality (a miss counting 0) with paired bootstrap CIs, the difference in answered quality, and
    whether the adaptive policy meets at least as many deadlines at no less quality (answered and overall).

    The qualities are measured means with CIs of their own: with ``table``, ``quality_noise`` is the half-width
    of the static point's relative-quality CI, and ``answered_within_noise`` says whether a lower answered quality
    is within it (a difference the evaluation could not resolve)."""
    from scout.stats import paired_bootstrap_diff

    by = _by_policy(comparison)
    out = []
    for name, res in by.items():
        if res.policy.kind != "adaptive":
            continue
        for base in ("static:int8", "static:int4"):
            if base not in by:
                continue
            a, b = res.records, by[base].records
            met_a = np.array([r.met for r in a], dtype=np.float64)
            met_b = np.array([r.met for r in b], dtype=np.float64)
            q_a = np.where(met_a > 0, [r.quality for r in a], 0.0)
            q_b = np.where(met_b > 0, [r.quality for r in b], 0.0)
            dm = paired_bootstrap_diff(met_a, met_b, n_boot=bootstrap, seed=seed)
            dq = paired_bootstrap_diff(q_a, q_b, n_boot=bootstrap, seed=seed)
            sa, sb = res.summary, by[base].summary
            d_answered = sa.mean_quality_answered - sb.mean_quality_answered
            noise = math.nan
            if table is not None and by[base].policy.point is not None:
                pt = table.find(by[base].policy.point, pair)
                noise = (pt.quality_hi - pt.quality_lo) / 2 / table.reference_quality(pt.model_pair)
            out.append(
                {
                    "adaptive": name,
                    "static": base,
                    "met_diff_pp": 100 * dm[0],
                    "met_diff_ci_pp": [100 * dm[1], 100 * dm[2]],
                    "quality_diff": dq[0],
                    "quality_diff_ci": [dq[1], dq[2]],
                    "answered_quality_diff": d_answered,
                    "meets_at_least_as_many": sa.met_pct >= sb.met_pct,
                    "at_least_answered_quality": d_answered >= -1e-12,
                    "at_least_mean_quality": sa.mean_quality >= sb.mean_quality - 1e-12,
                    "quality_noise": noise,
                    "answered_within_noise": bool(d_answered >= -noise) if math.isfinite(noise) else None,
                }
            )
    return out


def run_trace(
    name: str,
    table: OperatingPointTable,
    stages: StageTimes,
    pair: str,
    cfg: SuiteConfig,
    policies: Sequence[str],
) -> tuple[Comparison, BandwidthProcess, dict[str, str]]:
    """All policies on one bandwidth source, with the suite's request stream."""
    process, desc = make_process(name, cfg.seed)
    deadlines = deadline_list(stages, cfg.deadline_base, cfg.context_tokens, cfg.slacks_s)
    stream = StreamConfig(
        n_requests=cfg.requests,
        mean_interarrival_s=cfg.interarrival_s,
        context_tokens=[cfg.context_tokens],
        deadline_s=deadlines,
        model_pair=pair,
        seed=cfg.seed,
        extra_tokens=cfg.extra_tokens,
    )
    sim = SimConfig(
        probe_interval_s=cfg.probe_interval_s,
        bootstrap=cfg.bootstrap,
        seed=cfg.seed,
        plan_after_prefill=cfg.plan_after_prefill,
    )
    comparison = compare(request_stream(stream), process, table, stages, [parse_policy(p) for p in policies], sim)
    meta = {
        "bandwidth": desc,
        "model pair": pair,
        "requests": (
            f"{cfg.requests}, Poisson arrivals every {cfg.interarrival_s:g} s on average, {cfg.context_tokens} "
            f"context tokens (+{cfg.extra_tokens} prompt tokens), deadlines "
            + ", ".join(f"{d:.3f}" for d in deadlines)
            + " s (compute of "
            f"{cfg.deadline_base} + slack " + ", ".join(f"{s:g}" for s in cfg.slacks_s) + f" s), seed {cfg.seed}"
        ),
        "planning": "after the edge prefill (as the pipeline)" if cfg.plan_after_prefill else "at arrival",
        "stage times": stages.source or "(no source)",
    }
    return comparison, process, meta


# ----------------------------------------------------------------------------------------------------------------
# the whole suite
# ----------------------------------------------------------------------------------------------------------------
def run_suite(
    tables: Sequence[tuple[OperatingPointTable, str, StageTimes]],
    cfg: SuiteConfig,
    out_dir: Path,
    *,
    label: str = "",
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the single-device comparison on every trace for the first ``(table, pair, stages)`` and the cell over
    all of them; write ``<out_dir>/traces/<trace>.{json,md,png}``, ``summary.json``, ``summary.md`` and
    ``summary.png``. Returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "traces").mkdir(exist_ok=True)
    table0, pair0, stages0 = tables[0]
    planning, notes = restrict_table(table0, pair0, stages0, cfg.exclude_modes)
    policies = cfg.policies or default_policies(planning, pair0)
    per_trace: dict[str, Any] = {}
    for name in cfg.traces:
        comparison, process, meta = run_trace(name, planning, stages0, pair0, cfg, policies)
        stem = out_dir / "traces" / name
        payload = {
            "meta": meta,
            "summaries": [_policy_row(comparison, p) for p in _by_policy(comparison)],
            "verdicts": verdicts(comparison, planning, pair0, cfg.bootstrap, cfg.seed),
        }
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        stem.with_suffix(".md").write_text(render_markdown(comparison, meta), encoding="utf-8")
        plot_comparison(comparison, process, stem.with_suffix(".png"))
        per_trace[name] = payload
        progress(f"{label}{name}: {len(policies)} policies")
    # the cell
    devices = _cell_devices(tables, cfg)
    static = run_cell_static(devices, cfg.cell_capacity_bps)
    process, cell_desc = make_process(cfg.cell_trace, cfg.seed)
    interval = max(d.deadline_s for d in devices) + 1.0
    trace_cell = run_cell_trace(
        devices, process, rounds=cfg.cell_rounds, interval_s=interval, bootstrap=cfg.bootstrap, seed=cfg.seed
    )
    progress(f"{label}cell: {len(devices)} devices, {cfg.cell_rounds} rounds on {cfg.cell_trace}")
    summary = {
        "config": cfg.model_dump(mode="json"),
        "pair": pair0,
        "policies": policies,
        "planning_table_notes": notes,
        "points": [
            {
                "name": p.name,
                "plan": p.plan,
                "quality": p.quality_mean,
                "relative": planning.relative_quality(p),
                "n": p.n,
                "bytes": p.bytes_for(cfg.context_tokens, cfg.extra_tokens),
                "source": p.source,
            }
            for p in sorted(planning.for_pair(pair0), key=lambda p: -p.bytes_for(cfg.context_tokens, cfg.extra_tokens))
        ],
        "deadlines_s": deadline_list(stages0, cfg.deadline_base, cfg.context_tokens, cfg.slacks_s),
        "traces": per_trace,
        "cell": {
            "devices": [
                {"device": d.device_id, "pair": d.pair, "context_tokens": d.context_tokens, "deadline_s": d.deadline_s}
                for d in devices
            ],
            "static": {
                "capacity_mbps": cfg.cell_capacity_bps / 1e6,
                "allocators": {
                    name: {
                        "met": a.met,
                        "devices": len(a.devices),
                        "total_quality": a.total_quality,
                        "exact": a.exact,
                        "rows": allocation_rows(a, devices),
                    }
                    for name, a in static.items()
                },
            },
            "trace": {"bandwidth": cell_desc, "interval_s": interval, "allocators": trace_cell},
        },
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(render_summary(summary), encoding="utf-8")
    plot_summary(summary, out_dir / "summary.png")
    return summary


def _cell_devices(tables: Sequence[tuple[OperatingPointTable, str, StageTimes]], cfg: SuiteConfig) -> list[CellDevice]:
    """``cell_devices`` devices spread over the given pairs, the pair with the larger full KV first (the study's
    "large-KV" devices), each with the suite's context length and its own compute + ``cell_slack_s`` deadline."""
    pairs = []
    for table, pair, stages in tables:
        planning, _ = restrict_table(table, pair, stages, cfg.exclude_modes)
        per_token = max(p.bytes_for(cfg.context_tokens, cfg.extra_tokens) for p in planning.for_pair(pair))
        pairs.append((per_token, pair, planning, stages))
    pairs.sort(key=lambda x: -x[0])
    devices = []
    for i in range(cfg.cell_devices):
        _, pair, planning, stages = pairs[i * len(pairs) // cfg.cell_devices]
        deadline = deadline_list(stages, cfg.deadline_base, cfg.context_tokens, [cfg.cell_slack_s])[0]
        devices.append(CellDevice(f"dev{i}", pair, planning, stages, cfg.context_tokens, deadline, cfg.extra_tokens))
    return devices


# ----------------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------------
def _ci(v: float, ci: Sequence[float], digits: int = 1) -> str:
    return f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _mix(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _answered(v: dict[str, Any]) -> str:
    if v["at_least_answered_quality"]:
        return "yes"
    return "no, within the point's CI" if v.get("answered_within_noise") else "NO"


def _row(*cells: object) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(map(str, cells)) + " |"


def _section(title: str, *columns: str) -> list[str]:
    """A titled Markdown table's head: the title, the header row and a separator with one cell per column (so the
    two rows cannot disagree on how many columns there are)."""
    return ["", title, "", _row(*columns), "|" + "---|" * len(columns)]


def _policy_cells(row: dict[str, Any]) -> list[str]:
    """One policy on one trace, the "Per trace" table's cells after the trace."""
    ci_met, ci_quality = _ci(row["met_pct"], row["met_ci_pct"]), _ci(row["mean_quality"], row["mean_quality_ci"], 3)
    gap = f"{row['gap_met_pp']:+.1f} / {row['gap_quality']:+.3f}"
    mix = _mix(row["mode_counts"])
    return [row["policy"], ci_met, ci_quality, f"{row['answered_quality']:.3f}", f"{row['mean_bytes']:,.0f}", mix, gap]


def _verdict_cells(v: dict[str, Any]) -> list[str]:
    """One adaptive-vs-static comparison on one trace, the verdict table's cells after the trace."""
    met, quality = _ci(v["met_diff_pp"], v["met_diff_ci_pp"]), _ci(v["quality_diff"], v["quality_diff_ci"], 3)
    answered = f"{v['answered_quality_diff']:+.3f} (± {v['quality_noise']:.3f})"
    yes = {True: "yes", False: "NO"}
    at_least = [yes[v["meets_at_least_as_many"]], _answered(v), yes[v["at_least_mean_quality"]]]
    return [v["adaptive"], v["static"], met, quality, answered, *at_least]


def render_summary(summary: dict[str, Any]) -> str:
    """The suite's tables in Markdown: per trace and policy, the verdicts, and the cell."""
    cfg = summary["config"]
    lines = [
        f"Pair `{summary['pair']}`, {cfg['context_tokens']} context tokens "
        f"(+{cfg.get('extra_tokens', 0)} prompt tokens), deadlines "
        + ", ".join(f"{d:.3f}" for d in summary["deadlines_s"])
        + f" s (compute of `{cfg['deadline_base']}` + slack "
        + ", ".join(f"{s:g}" for s in cfg["slacks_s"])
        + f" s), {cfg['requests']} requests per trace (Poisson, mean gap {cfg['interarrival_s']:g} s, seed "
        f"{cfg['seed']}), planning {'after the edge prefill' if cfg['plan_after_prefill'] else 'at arrival'}.",
        "",
        "Operating points the policies plan with (relative quality = mean / the pair's reference):",
        "",
        "| point | plan | quality | relative % | n | bytes | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in summary["points"]:
        lines.append(
            f"| `{p['name']}` | {p['plan']} | {p['quality']:.3f} | {100 * p['relative']:.1f} | {p['n']} "
            f"| {p['bytes']:,} | {p['source']} |"
        )
    if summary["planning_table_notes"]:
        lines += ["", "Left out: " + "; ".join(summary["planning_table_notes"]) + "."]
    lines += _section(
        "### Per trace",
        "trace", "policy", "met % [95 % CI]", "mean quality [95 % CI]", "answered quality", "mean bytes",
        "points chosen", "gap to oracle (met pp / quality)",
    )  # fmt: skip
    lines += [
        _row(trace, *_policy_cells(row)) for trace, data in summary["traces"].items() for row in data["summaries"]
    ]
    lines += _section(
        "### Adaptive vs static INT8 / INT4 (same requests; paired bootstrap 95 % CIs)",
        "trace", "adaptive", "vs", "Δ met pp [CI]", "Δ mean quality [CI]", "Δ answered quality (± point CI)",
        "≥ deadlines", "≥ answered quality", "≥ mean quality",
    )  # fmt: skip
    lines += [_row(trace, *_verdict_cells(v)) for trace, data in summary["traces"].items() for v in data["verdicts"]]
    cell = summary["cell"]
    st = cell["static"]
    lines += _section(
        f"### Multi-device cell: {len(cell['devices'])} devices, {st['capacity_mbps']:g} Mbit/s constant",
        "allocator", "deadlines met", "total relative quality", "exact", "device: pair, share Mbit/s (needs), point",
    )  # fmt: skip
    for name, a in st["allocators"].items():
        devs = "; ".join(
            f"{r['device']}: {r['pair']}, {r['share_mbps']:.1f}"
            + (f" ({r['need_mbps']:.1f})" if r["need_mbps"] is not None else " (—)")
            + f", {r['point']}{'' if r['feasible'] else ' MISS'}"
            for r in a["rows"]
        )
        lines.append(f"| {name} | {a['met']} / {a['devices']} | {a['total_quality']:.3f} | {a['exact']} | {devs} |")
    tr = cell["trace"]
    lines += _section(
        f"Trace-driven cell: {tr['bandwidth']}; one round every {tr['interval_s']:.1f} s, the split made on the last "
        "second's mean rate, each transfer timed on the actual trace at its fixed fraction.",
        "allocator", "device requests", "met % [95 % CI]", "mean quality [95 % CI]", "misses by pair", "points chosen",
    )  # fmt: skip
    for name, a in tr["allocators"].items():
        misses = ", ".join(f"{k} {v}" for k, v in a["misses_by_pair"].items()) or "none"
        lines.append(
            f"| {name} | {a['requests']} | {_ci(a['met_pct'], a['met_ci_pct'])} "
            f"| {_ci(a['mean_quality'], a['mean_quality_ci'], 3)} | {misses} | {_mix(a['points'])} |"
        )
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    """Deadlines met and mean quality per policy and trace (grouped bars), one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(summary["traces"])
    policies = summary["policies"]
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 1.6 * len(traces)), 8), sharex=True)
    width = 0.8 / len(policies)
    x = np.arange(len(traces))
    cmap = plt.get_cmap("tab20")
    for k, key in enumerate(("met_pct", "mean_quality")):
        ax = axes[k]
        for i, pol in enumerate(policies):
            vals = []
            for t in traces:
                row = next(r for r in summary["traces"][t]["summaries"] if r["policy"] == pol)
                vals.append(row[key] * (100 if key == "mean_quality" else 1))
            ax.bar(x - 0.4 + (i + 0.5) * width, vals, width, label=pol, color=cmap(i % 20))
        ax.set_ylabel("deadlines met, %" if key == "met_pct" else "mean quality (miss = 0), % of reference")
        ax.grid(True, axis="y", alpha=0.3)
    axes[1].set_xticks(x, traces, rotation=20, ha="right", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(f"{summary['pair']}: policies per bandwidth source", fontsize=9, y=0.995)
    fig.legend(
        handles, labels, fontsize=7, ncol=min(len(policies), 6), loc="upper center", bbox_to_anchor=(0.5, 0.965),
        frameon=False,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
