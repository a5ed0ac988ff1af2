"""Simulation of the adaptive policy: a request stream over a bandwidth process, planned by a policy, timed on the
actual link.

Why simulate and not just plan: a plan is a prediction made with an *estimate*; whether the deadline is met
depends on the bandwidth the transfer really sees. Here every transfer is integrated on the process
(`transfer_finish_time`), so a policy that trusts a spike misses deadlines exactly as it would on the link.
The oracle (which plans on the process itself) runs on the same inputs, and the gap to it is what better
estimation could still win.

Model of one device's uplink:

* requests arrive at ``t_s``; a request's stages run as `StageTimes` says; a transfer starts when its
  encoding is done *and* the uplink has finished earlier transfers (FIFO, one link), and ends at
  ``transfer_finish_time(start, bytes)``; decode and generation follow. Modes that send nothing do not queue.
* the estimator sees only the past, in time order: the link's rate at t = 0 (the rate the shaper reports as
  configured), then every ``probe_interval_s`` the mean rate of the interval just ended (what a throughput
  monitor reports), and the goodput of every finished transfer of at least ``min_goodput_bytes`` at its end
  time (tiny transfers measure round trips, not rate). The planner also knows how many bytes are still queued
  on its own uplink (a device knows its socket backlog).
* a request meets its deadline if it finishes within ``deadline_s`` (plus `DEADLINE_SLACK_S`); its quality
  is the chosen point's relative quality, counted as 0 in ``mean_quality`` when the deadline is missed (a late
  answer is a miss) and as is in ``mean_quality_answered`` (if it finishes at all).

Everything is a pure function of the inputs (requests, process, table, stage times, policy, config); the only
randomness is the request stream's seed and the process's own seed.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scout.channel.process import BandwidthProcess, StepProcess
from scout.policy.estimators import make_estimator
from scout.policy.operating_points import OperatingPointTable
from scout.policy.planner import (
    DEADLINE_SLACK_S,
    Plan,
    PlanRequest,
    StageTimes,
    plan,
    plan_oracle,
    plan_robust,
    plan_static,
)

__all__ = [
    "Comparison",
    "PolicySpec",
    "PolicySummary",
    "RequestRecord",
    "SimConfig",
    "SimRequest",
    "SimResult",
    "StreamConfig",
    "compare",
    "parse_policy",
    "plot_comparison",
    "render_markdown",
    "request_stream",
    "simulate",
    "summarise",
    "write_report",
]


class SimRequest(BaseModel):
    """One request of the stream."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str
    t_s: float = Field(ge=0)
    context_tokens: int = Field(ge=0)
    deadline_s: float = Field(gt=0)
    model_pair: str | None = None
    extra_tokens: int = Field(default=0, ge=0)
    """Prompt tokens around the context that KV modes send in full (`scout.policy.planner.PlanRequest`)."""

    def plan_request(self) -> PlanRequest:
        return PlanRequest(
            context_tokens=self.context_tokens,
            deadline_s=self.deadline_s,
            model_pair=self.model_pair,
            request_id=self.request_id,
            extra_tokens=self.extra_tokens,
        )


class StreamConfig(BaseModel):
    """A seeded request stream: arrivals (Poisson or evenly spaced), context lengths and deadlines drawn
    uniformly from the given choices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_requests: int = Field(gt=0)
    mean_interarrival_s: float = Field(gt=0)
    arrivals: Literal["poisson", "fixed"] = "poisson"
    context_tokens: list[int] = Field(min_length=1)
    deadline_s: list[float] = Field(min_length=1)
    start_s: float = Field(default=0.0, ge=0)
    model_pair: str | None = None
    seed: int = 0
    extra_tokens: int = Field(default=0, ge=0)
    """Prompt tokens around each context (instruction, question), sent in full by KV modes."""


def request_stream(config: StreamConfig) -> list[SimRequest]:
    """The requests of a `StreamConfig`, in arrival order (a pure function of the config)."""
    rng = np.random.default_rng(config.seed)
    n = config.n_requests
    if config.arrivals == "poisson":
        gaps = rng.exponential(config.mean_interarrival_s, size=n)
        gaps[0] = 0.0
    else:
        gaps = np.full(n, config.mean_interarrival_s)
        gaps[0] = 0.0
    times = config.start_s + np.cumsum(gaps)
    ctx = rng.choice(np.asarray(config.context_tokens, dtype=np.int64), size=n)
    dl = rng.choice(np.asarray(config.deadline_s, dtype=np.float64), size=n)
    width = len(str(n - 1))
    return [
        SimRequest(
            request_id=f"r{i:0{width}d}",
            t_s=float(times[i]),
            context_tokens=int(ctx[i]),
            deadline_s=float(dl[i]),
            model_pair=config.model_pair,
            extra_tokens=config.extra_tokens,
        )
        for i in range(n)
    ]


class PolicySpec(BaseModel):
    """A policy: ``adaptive`` (plan on an estimator), ``robust`` (plan on a low quantile of recent samples),
    ``oracle`` (plan on the actual process) or ``static`` (always one operating point)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["adaptive", "robust", "oracle", "static"]
    estimator: str = "ewma"
    quantile: float = Field(default=0.1, ge=0, le=1)
    window: int = Field(default=20, ge=1)
    point: str | None = None


def parse_policy(text: str) -> PolicySpec:
    """``adaptive`` / ``adaptive:harmonic:5`` / ``robust`` / ``robust:0.1`` / ``robust:0.1:20`` / ``oracle`` /
    ``static:int8`` / ``static:int4@0.5`` (the estimator spec after ``adaptive:`` is `make_estimator`'s)."""
    kind, _, rest = text.partition(":")
    if kind == "adaptive":
        est = rest or "ewma"
        make_estimator(est)  # validate now, not in the middle of a run
        return PolicySpec(name=text, kind="adaptive", estimator=est)
    if kind == "robust":
        parts = [p for p in rest.split(":") if p]
        if len(parts) > 2:
            raise ValueError(f"bad policy {text!r}: robust[:q[:window]]")
        q = float(parts[0]) if parts else 0.1
        window = int(parts[1]) if len(parts) > 1 else 20
        return PolicySpec(name=text, kind="robust", quantile=q, window=window)
    if kind == "oracle" and not rest:
        return PolicySpec(name="oracle", kind="oracle")
    if kind == "static" and rest:
        return PolicySpec(name=text, kind="static", point=rest, estimator="last")
    raise ValueError(
        f"unknown policy {text!r}; use adaptive[:estimator], robust[:q[:window]], oracle or static:<point>"
    )


class SimConfig(BaseModel):
    """What the estimator observes (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    probe_interval_s: float | None = Field(default=1.0, gt=0)
    min_goodput_bytes: int = Field(default=64 * 1024, ge=1)
    bootstrap: int = Field(default=1000, ge=1)
    seed: int = 0
    plan_after_prefill: bool = False
    """Plan when the edge's prefill and scoring are done, as the pipeline does (the selector asks the policy after
    `edge_prefill`), instead of at arrival: the estimate and the uplink backlog are those of that moment. With
    compute that takes seconds this is the difference between a fresh and a stale estimate. The pre-plan time is
    the smallest ``prefill + score`` of the table's modes at the request's context length."""


class RequestRecord(BaseModel):
    """What happened to one request under one policy."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    request_id: str
    t_s: float
    context_tokens: int
    deadline_s: float
    point: str
    mode: str
    bytes: int
    estimate_bps: float
    expected_time_s: float
    actual_time_s: float
    met: bool
    quality: float
    planned_feasible: bool
    fallback: bool
    transfer_start_s: float | None
    transfer_end_s: float | None
    reason: str


class PolicySummary(BaseModel):
    """Aggregates of one policy's run."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    policy: str
    n: int
    met_pct: float
    met_ci_pct: tuple[float, float]
    mean_quality: float = Field(description="relative quality, a missed deadline counting 0")
    mean_quality_ci: tuple[float, float]
    mean_quality_answered: float = Field(description="relative quality of every answer that arrives at all")
    mode_counts: dict[str, int]
    planned_feasible_pct: float
    mispredicted_pct: float = Field(description="planned as feasible, missed on the actual link")
    fallback_pct: float
    latency_p50_s: float
    latency_p95_s: float
    never_finished: int


class SimResult(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")

    policy: PolicySpec
    records: list[RequestRecord]
    summary: PolicySummary


class _Probes:
    """The estimator's view of the link: rate at 0, then interval means every ``dt``, merged with goodputs."""

    def __init__(self, process: BandwidthProcess, dt: float | None) -> None:
        self.process = process
        self.dt = dt
        self.k = 0
        self.goodputs: list[tuple[float, float]] = []

    def due(self, t: float) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        if self.k == 0:
            out.append((0.0, self.process.rate_at(0.0)))
            self.k = 1
        if self.dt is not None:
            while self.k * self.dt <= t:
                t1 = self.k * self.dt
                out.append((t1, self.process.mean_rate(t1 - self.dt, t1)))
                self.k += 1
        while self.goodputs and self.goodputs[0][0] <= t:
            out.append(heapq.heappop(self.goodputs))
        out.sort(key=lambda x: x[0])
        return out


def _queued_bytes(process: BandwidthProcess, inflight: list[tuple[float, float, int]], t: float) -> float:
    """Bytes still to send at ``t`` on a FIFO uplink: the unfinished part of the transfer in progress plus every
    transfer queued behind it. ``inflight`` holds ``(start, end, bytes)`` in FIFO order."""
    total = 0.0
    for start, end, nbytes in inflight:
        if end <= t:
            continue
        if start >= t:
            total += nbytes
        else:
            delivered = process.mean_rate(start, t) * (t - start) / 8.0
            total += max(0.0, nbytes - delivered)
    return total


def simulate(
    requests: Sequence[SimRequest],
    process: BandwidthProcess,
    table: OperatingPointTable,
    stages: StageTimes,
    policy: PolicySpec,
    config: SimConfig | None = None,
) -> SimResult:
    """Run one policy over the requests on the process; see the module docstring for the model."""
    config = config or SimConfig()
    if not requests:
        raise ValueError("no requests to simulate")
    pre_plan = _pre_plan_time(table, stages, requests) if config.plan_after_prefill else None
    t_plan = {r.request_id: r.t_s + (pre_plan(r) if pre_plan else 0.0) for r in requests}
    reqs = sorted(requests, key=lambda r: (t_plan[r.request_id], r.t_s, r.request_id))
    estimator = make_estimator(policy.estimator)
    window: deque[float] = deque(maxlen=policy.window)
    probes = _Probes(process, config.probe_interval_s)
    inflight: list[tuple[float, float, int]] = []
    link_free = 0.0
    records: list[RequestRecord] = []
    for r in reqs:
        now = t_plan[r.request_id]
        for t_obs, rate in probes.due(now):
            estimator.update(t_obs, rate)
            window.append(rate)
        inflight = [x for x in inflight if x[1] > now]
        queued = _queued_bytes(process, inflight, now)
        pr = r.plan_request()
        est = estimator.estimate()
        if policy.kind == "robust":
            est = float(np.quantile(np.asarray(list(window), dtype=np.float64), policy.quantile)) if window else 0.0
        # The planner counts the queue from arrival; a backlog seen `now - t_s` later is the same as one that
        # much larger at arrival, draining at the estimated rate meanwhile (exact at a constant rate).
        if queued > 0 and now > r.t_s and est > 0:
            queued += est * (now - r.t_s) / 8.0
        p: Plan
        if policy.kind == "adaptive":
            p = plan(pr, est, table, stages, queued_bytes=queued)
        elif policy.kind == "robust":
            p = plan_robust(pr, list(window), table, stages, quantile=policy.quantile, queued_bytes=queued)
            est = p.bandwidth_bps
        elif policy.kind == "oracle":
            p = plan_oracle(pr, r.t_s, process, table, stages, link_free_s=link_free)
            est = p.bandwidth_bps
        else:
            assert policy.point is not None
            p = plan_static(pr, policy.point, est, table, stages, queued_bytes=queued)
        ms = stages.for_mode(p.mode)
        before, after = ms.before_transfer_s(r.context_tokens), ms.after_transfer_s(r.context_tokens)
        start: float | None = None
        end: float | None = None
        if p.bytes > 0:
            start = max(r.t_s + before, link_free)
            # Behind a transfer that never finishes, nothing else ever starts.
            end = process.transfer_finish_time(start, p.bytes) if math.isfinite(start) else math.inf
            link_free = end
            inflight.append((start, end, p.bytes))
            if math.isfinite(end) and p.bytes >= config.min_goodput_bytes and end > start:
                heapq.heappush(probes.goodputs, (end, 8.0 * p.bytes / (end - start)))
            done = end + after
        else:
            done = r.t_s + before + after
        latency = done - r.t_s
        met = latency <= r.deadline_s + DEADLINE_SLACK_S
        records.append(
            RequestRecord(
                request_id=r.request_id,
                t_s=r.t_s,
                context_tokens=r.context_tokens,
                deadline_s=r.deadline_s,
                point=p.point,
                mode=p.mode,
                bytes=p.bytes,
                estimate_bps=est,
                expected_time_s=p.expected_time_s,
                actual_time_s=latency,
                met=met,
                quality=p.expected_quality,
                planned_feasible=p.feasible,
                fallback=p.fallback,
                transfer_start_s=start,
                transfer_end_s=end,
                reason=p.reason,
            )
        )
    records.sort(key=lambda rec: (rec.t_s, rec.request_id))
    return SimResult(policy=policy, records=records, summary=summarise(policy.name, records, config))


def _pre_plan_time(
    table: OperatingPointTable, stages: StageTimes, requests: Sequence[SimRequest]
) -> Callable[[SimRequest], float]:
    """Seconds from arrival to the plan (`SimConfig.plan_after_prefill`): the smallest ``prefill + score`` over
    the modes the request's model pair can choose, at its context length."""
    modes: dict[str | None, list[str]] = {}
    for r in requests:
        if r.model_pair not in modes:
            modes[r.model_pair] = sorted({p.mode for p in table.for_pair(r.model_pair)})

    def pre(r: SimRequest) -> float:
        n = r.context_tokens
        return min(stages.for_mode(m).prefill.at(n) + stages.for_mode(m).score.at(n) for m in modes[r.model_pair])

    return pre


def summarise(name: str, records: Sequence[RequestRecord], config: SimConfig | None = None) -> PolicySummary:
    """Deadline and quality aggregates with bootstrap 95 % CIs (`scout.stats.bootstrap_ci`)."""
    from scout.stats import bootstrap_ci

    config = config or SimConfig()
    if not records:
        raise ValueError(f"policy {name}: no records to summarise")
    met = np.asarray([r.met for r in records], dtype=np.float64)
    finished = np.asarray([math.isfinite(r.actual_time_s) for r in records])
    q = np.asarray([r.quality for r in records], dtype=np.float64)
    useful = np.where(met > 0, q, 0.0)
    m, m_lo, m_hi = bootstrap_ci(met, n_boot=config.bootstrap, seed=config.seed)
    u, u_lo, u_hi = bootstrap_ci(useful, n_boot=config.bootstrap, seed=config.seed)
    # Latency quantiles without interpolation: a request that never finishes has latency inf, and
    # interpolating towards inf yields nan.
    lat = np.asarray([r.actual_time_s for r in records], dtype=np.float64)
    planned = np.asarray([r.planned_feasible for r in records])
    return PolicySummary(
        policy=name,
        n=len(records),
        met_pct=100.0 * m,
        met_ci_pct=(100.0 * m_lo, 100.0 * m_hi),
        mean_quality=u,
        mean_quality_ci=(u_lo, u_hi),
        mean_quality_answered=float(q[finished].mean()) if finished.any() else 0.0,
        mode_counts=dict(sorted(Counter(r.point for r in records).items())),
        planned_feasible_pct=100.0 * float(planned.mean()),
        mispredicted_pct=100.0 * float(np.mean(planned & (met == 0))),
        fallback_pct=100.0 * float(np.mean([r.fallback for r in records])),
        latency_p50_s=float(np.quantile(lat, 0.5, method="inverted_cdf")),
        latency_p95_s=float(np.quantile(lat, 0.95, method="inverted_cdf")),
        never_finished=int((~finished).sum()),
    )


class Comparison(BaseModel):
    """Several policies on the same inputs, with each policy's gap to the oracle (oracle minus policy)."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    results: list[SimResult]
    gaps_to_oracle: dict[str, dict[str, float]]

    def summaries(self) -> list[PolicySummary]:
        return [r.summary for r in self.results]


def compare(
    requests: Sequence[SimRequest],
    process: BandwidthProcess,
    table: OperatingPointTable,
    stages: StageTimes,
    policies: Sequence[PolicySpec],
    config: SimConfig | None = None,
) -> Comparison:
    """Run every policy (the oracle is added if missing) on the same requests and process."""
    specs = list(policies)
    if not any(p.kind == "oracle" for p in specs):
        specs.append(parse_policy("oracle"))
    names = [p.name for p in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique: {names}")
    results = [simulate(requests, process, table, stages, p, config) for p in specs]
    oracle = next(r.summary for r in results if r.policy.kind == "oracle")
    gaps = {
        r.policy.name: {
            "met_pct": oracle.met_pct - r.summary.met_pct,
            "mean_quality": oracle.mean_quality - r.summary.mean_quality,
        }
        for r in results
    }
    return Comparison(results=results, gaps_to_oracle=gaps)


# ----------------------------------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------------------------------
def _fmt_ci(value: float, ci: tuple[float, float], digits: int = 1) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def render_markdown(comparison: Comparison, meta: dict[str, str]) -> str:
    """A Markdown report: the run's inputs (``meta``), one row per policy, and how to read the columns."""
    lines = ["# Policy simulation", ""]
    lines += [f"- **{k}**: {v}" for k, v in meta.items()]
    lines += [
        "",
        "| policy | deadlines met % [95 % CI] | mean quality [95 % CI] | answered quality | fallback % "
        "| mispredicted % | p50 s | p95 s | points chosen | gap to oracle (met pp / quality) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison.results:
        s = r.summary
        gap = comparison.gaps_to_oracle[s.policy]
        modes = ", ".join(f"{k} {v}" for k, v in s.mode_counts.items())
        lines.append(
            f"| {s.policy} | {_fmt_ci(s.met_pct, s.met_ci_pct)} | {_fmt_ci(s.mean_quality, s.mean_quality_ci, 3)} "
            f"| {s.mean_quality_answered:.3f} | {s.fallback_pct:.1f} | {s.mispredicted_pct:.1f} "
            f"| {s.latency_p50_s:.3f} | {s.latency_p95_s:.3f} | {modes} "
            f"| {gap['met_pct']:+.1f} / {gap['mean_quality']:+.3f} |"
        )
    lines += [
        "",
        "Quality is relative to the table's reference for the model pair; *mean quality* counts a missed deadline "
        "as 0, *answered quality* averages every answer that arrives. *Mispredicted*: planned as feasible, missed "
        "on the actual link. CIs: percentile bootstrap over requests. The oracle plans on the actual bandwidth "
        "process; the gap is oracle minus policy.",
        "",
    ]
    return "\n".join(lines)


def plot_comparison(comparison: Comparison, process: BandwidthProcess, path: str | Path) -> None:
    """Bandwidth over the run with arrivals, the point each policy chose per request (x = missed), and the
    deadline / quality bars, in one PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = comparison.results[0].records
    t_end = max(r.t_s + (r.actual_time_s if math.isfinite(r.actual_time_s) else r.deadline_s) for r in first)
    t_end = max(t_end, first[-1].t_s + 1.0)
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), gridspec_kw={"height_ratios": [2, 2, 1.6]})
    ax = axes[0]
    xs: list[float] = []
    ys: list[float] = []
    if isinstance(process, StepProcess):
        for a, b, rate in process.segments(0.0, t_end):
            xs += [a, b]
            ys += [rate / 1e6, rate / 1e6]
    else:  # any other BandwidthProcess: sample it
        xs = list(np.linspace(0.0, t_end, 2000))
        ys = [process.rate_at(x) / 1e6 for x in xs]
    ax.plot(xs, ys, lw=0.8, color="tab:blue")
    ax.vlines([r.t_s for r in first], 0, max(ys or [1.0]) * 0.05, color="k", lw=0.6, label="arrivals")
    ax.set_ylabel("uplink, Mbit/s")
    ax.set_xlim(0, t_end)
    ax.legend(loc="upper right", fontsize=8)

    ax = axes[1]
    points = sorted({r.point for res in comparison.results for r in res.records})
    cmap = plt.get_cmap("tab10")
    colors = {p: cmap(i % 10) for i, p in enumerate(points)}
    for row, res in enumerate(comparison.results):
        for p in points:
            ok = [r.t_s for r in res.records if r.point == p and r.met]
            bad = [r.t_s for r in res.records if r.point == p and not r.met]
            ax.scatter(ok, [row] * len(ok), color=colors[p], s=14, marker="o", label=p if row == 0 else None)
            ax.scatter(bad, [row] * len(bad), color=colors[p], s=22, marker="x")
    ax.set_yticks(range(len(comparison.results)), [r.policy.name for r in comparison.results], fontsize=8)
    ax.set_xlim(0, t_end)
    ax.set_xlabel("time, s (o = deadline met, x = missed)")
    handles = [plt.Line2D([], [], color=colors[p], marker="o", ls="", label=p) for p in points]
    ax.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        ncol=min(len(points), 8),
        frameon=False,
    )

    ax = axes[2]
    names = [s.policy for s in comparison.summaries()]
    idx = np.arange(len(names))
    met = [s.met_pct for s in comparison.summaries()]
    qual = [100.0 * s.mean_quality for s in comparison.summaries()]
    ax.bar(idx - 0.2, met, width=0.4, label="deadlines met, %")
    ax.bar(idx + 0.2, qual, width=0.4, label="mean quality (miss = 0), % of reference")
    ax.set_xticks(idx, names, fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    plt.close(fig)


def write_report(
    comparison: Comparison,
    process: BandwidthProcess,
    out_dir: str | Path,
    meta: dict[str, str],
    stem: str = "simulation",
) -> dict[str, str]:
    """Write ``<stem>.json`` (inputs + every record + summaries), ``<stem>.md`` and ``<stem>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    payload = {"meta": meta, "comparison": json.loads(comparison.model_dump_json())}
    paths["json"].write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(comparison, meta), encoding="utf-8")
    plot_comparison(comparison, process, paths["png"])
    return {k: str(v) for k, v in paths.items()}
