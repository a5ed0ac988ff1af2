"""Operating-point tables from the saved evaluation runs: what the planner plans with, per model pair.

Why a separate export: the planner (`scout.policy.planner`) must never plan with a quality someone typed in. Every
quality here is a condition mean of a saved run (``reports/eval/<experiment>/<run>/``: ``run.json`` names the
experiment, dataset and models; the per-run summary holds each condition's mean with its bootstrap CI and n), and
every size comes from the codec's own size-model builders (`kv_size_model`, `positions_size_model`,
`message_size_model`), with the blob's JSON header measured by encoding a synthetic cache through the real wire
format (`scout.codec.wire.encode_blob`), so that "fits the deadline" holds for the bytes the pipeline really sends.

What goes into the table of a pair ``edge -> cloud`` (``E != C``):

* KV modes (``full`` = bf16, ``int8``, ``int4``, ``int2``, ``mixed`` …) are measured on the **edge** model's runs:
  a KV cache is only usable by the model that made it, so in KV modes the cloud decodes with the edge's model and
  the answer is the edge model's. Retention 1 comes from ``quantization`` runs (and ``combined`` runs at ``@1``,
  and the full-context answer of ``selection`` runs for ``full``); retention ``r`` from ``selection`` runs
  (``q2c@r``: bf16 KV of the kept positions) and ``combined`` runs (``int8@r`` …).
* ``scout@r`` from the ``scout`` run of exactly that pair (condition ``scout@r``: the cloud re-reads the document
  attending only to the edge's positions).
* ``local`` (nothing sent, the edge answers): the edge model's full-context answer.
* ``text`` (question + document reference; the cloud reads everything) only when asked for (``include_text``):
  its size model counts no document bytes (the document is content-addressed and assumed to be in the cloud store
  already, as scout mode assumes too), so with it in a table every other mode is dominated unless a selection
  beats the full context. It is the cloud's full-context answer, i.e. the reference.
* The reference (100 %) is the **cloud** model's full-context answer: ``cloud_full`` of a scout run, or the
  ``bf16`` / ``full`` / ``bf16@1`` condition of the cloud model's own runs.

A single-model table (``M -> M``) holds M's KV points with M's own full-context answer as the reference.

Where one operating point was measured by several runs, the one with the most examples wins (ties: quantization,
combined, selection, scout, in that order) and the point's notes name the others; for retention points a
selection run that evicts (the kept positions' KV from the full prefill: what a KV transfer does) is preferred
over one that masks and re-reads (the study's method, which is closer to scout mode). Runs of another compute
dtype (folder suffix ``__fp32``) are candidates like any other; the point's source names the run folder.
Runs cover different numbers of examples (a partial run is labelled "n of N"): qualities of different points then
rest on different example sets, which the table's ``source`` says. Codec conditions become planner modes through
`scout_eval.codec_modes` (CacheGen-style ``delta-…`` codecs are not transport modes the planner offers and are left
out); the per-run statistics come from `scout_eval.summary`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scout.policy.operating_points import (
    KVGeometry,
    MeasuredQuality,
    OperatingPoint,
    OperatingPointTable,
    SizeModel,
    message_size_model,
    positions_size_model,
)
from scout_eval.codec_modes import CodecMode, codec_modes, geometry_of_model, kv_point_size, parse_codec
from scout_eval.run_folder import RUN_FILE, iter_runs
from scout_eval.summary import summarise_run

__all__ = [
    "MIN_EXAMPLES",
    "NoMeasuredPoints",
    "RunResult",
    "build_pair_table",
    "build_single_table",
    "collect_runs",
    "pair_name",
    "table_file_name",
    "write_operating_points",
]

OUT_DIR = "operating_points"
MIN_EXAMPLES = 10
"""A point (or reference) measured on fewer examples is left out of a table (and named in its ``source``): a
run that has just started would otherwise hand the planner a quality from one or two answers."""

_RETENTION = re.compile(r"^(?P<name>.+)@(?P<r>[0-9]*\.?[0-9]+)$")
_EXPERIMENT_ORDER = ("quantization", "combined", "selection", "scout")
_FULL_CONDITIONS = {"quantization": "bf16", "selection": "full", "combined": "bf16@1"}


class NoMeasuredPoints(ValueError):
    """A model pair has no measured operating point (or no reference quality) in the runs at hand."""


def pair_name(edge: str, cloud: str) -> str:
    """How tables, plans and stage times name a model pair: ``edge->cloud`` (``M->M`` for one model)."""
    return f"{edge}->{cloud}"


def table_file_name(edge: str, cloud: str, dataset: str = "squad_v2") -> str:
    """``<edge>__<cloud>.json`` (``<model>.json`` for one model); other datasets than SQuAD v2 get a suffix."""
    stem = edge if edge == cloud else f"{edge}__{cloud}"
    return f"{stem}.json" if dataset == "squad_v2" else f"{stem}__{dataset}.json"


# ----------------------------------------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunResult:
    """One saved run: identity from ``run.json``, per-condition quality from its summary."""

    experiment: str
    dataset: str
    run: str
    model: str
    cloud_model: str | None
    metric: str
    n: int
    n_planned: int
    conditions: dict[str, dict[str, Any]]
    dtype: str = "bf16"
    application: str = "mask"

    @property
    def kv_faithful(self) -> bool:
        """Whether the run's retention points are what a KV transfer does: the kept positions' KV from the full
        prefill (``evict``; combined runs always evict). A ``mask``/``drop`` selection run re-reads the prompt
        instead, a different method, used only where no evict run exists."""
        return self.experiment != "selection" or self.application == "evict"

    @property
    def label(self) -> str:
        """``experiment/run`` with ``(n of N, partial)`` when the run has not finished its examples."""
        part = f"n={self.n}" if self.n >= self.n_planned else f"n={self.n} of {self.n_planned}, partial"
        return f"{self.experiment}/{self.run} ({part})"

    def quality(self, condition: str) -> MeasuredQuality | None:
        """The metric's mean [CI] of a condition, or None if the run has none (or no finite mean)."""
        entry = self.conditions.get(condition, {}).get(self.metric)
        if not entry or entry.get("mean") is None:
            return None
        mean = float(entry["mean"])
        if not math.isfinite(mean) or int(entry.get("n", self.n)) <= 0:
            return None
        lo, hi = float(entry.get("lo", mean)), float(entry.get("hi", mean))
        lo = min(lo, mean) if math.isfinite(lo) else mean
        hi = max(hi, mean) if math.isfinite(hi) else mean
        return MeasuredQuality(
            mean=mean, lo=lo, hi=hi, n=int(entry.get("n", self.n)), source=f"{self.experiment}/{self.run}:{condition}"
        )


def collect_runs(root: Path, summaries: Sequence[dict[str, Any]] | None = None) -> list[RunResult]:
    """Every run under ``root`` with its summary: ``summaries`` as `write_reports` just computed them (matched by
    experiment and run folder), else computed from the run's samples now (`summarise_run`)."""
    by_key = {(s["experiment"], s["run"]): s for s in summaries or []}
    out = []
    for run_dir in iter_runs(root):
        info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        cfg = info.get("config", {})
        key = (info["experiment"], run_dir.name)
        summary = by_key.get(key)
        if summary is None:  # computed from the samples, never a summary.json that a running eval has outgrown
            summary = summarise_run(run_dir)
        out.append(
            RunResult(
                experiment=info["experiment"],
                dataset=str(cfg.get("dataset", "")),
                run=run_dir.name,
                model=str(cfg.get("model", "")),
                cloud_model=cfg.get("cloud_model"),
                metric=str(info.get("metric", summary.get("metric", "f1"))),
                n=int(summary.get("n", 0)),
                n_planned=int(cfg.get("n", summary.get("n", 0)) or 0),
                conditions=dict(summary.get("conditions", {})),
                dtype=str(cfg.get("dtype", "bf16")),
                application=str((cfg.get("options") or {}).get("application", "mask")),
            )
        )
    return out


# ----------------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Candidate:
    mode: str
    retention: float
    plan: str
    quality: MeasuredQuality
    run: RunResult
    size: Callable[[], SizeModel]
    notes: str = ""


def _order(run: RunResult) -> int:
    return _EXPERIMENT_ORDER.index(run.experiment) if run.experiment in _EXPERIMENT_ORDER else len(_EXPERIMENT_ORDER)


def _best(cands: Sequence[_Candidate]) -> _Candidate:
    """A KV-faithful run first (`RunResult.kv_faithful`), then most examples, then the experiment order of the
    module docstring, then the run name."""
    return min(cands, key=lambda c: (not c.run.kv_faithful, -c.quality.n, _order(c.run), c.run.run))


def _full_answers(runs: Sequence[RunResult], model: str, scout_role: str) -> list[tuple[MeasuredQuality, RunResult]]:
    """Every measurement of ``model``'s full-context answer, best first (`_best`'s order): its KV runs' full
    conditions and, in scout runs, ``edge_full`` (``scout_role="edge"``) or ``cloud_full`` (``"cloud"``)."""
    out = []
    for run in runs:
        if run.experiment == "scout":
            who = run.model if scout_role == "edge" else run.cloud_model
            q = run.quality(f"{scout_role}_full") if who == model else None
        else:
            q = run.quality(_FULL_CONDITIONS.get(run.experiment, "")) if run.model == model else None
        if q is not None:
            out.append((q, run))
    out.sort(key=lambda qr: (-qr[0].n, _order(qr[1]), qr[1].run))
    return out


def _kv_candidates(runs: Sequence[RunResult], model: str, geometry: KVGeometry) -> list[_Candidate]:
    mine = [r for r in runs if r.model == model and r.experiment in ("quantization", "combined", "selection")]
    codecs: list[str] = []
    for run in mine:
        for cond in run.conditions:
            if run.experiment == "quantization":
                codecs.append(cond)
            elif run.experiment == "combined" and (m := _RETENTION.match(cond)):
                codecs.append(m["name"])
    modes = codec_modes(codecs)
    sizes: dict[str, SizeModel] = {}

    def size_of(cm: CodecMode) -> Callable[[], SizeModel]:
        def build() -> SizeModel:
            if cm.codec not in sizes:
                sizes[cm.codec] = kv_point_size(geometry, cm)
            return sizes[cm.codec]

        return build

    out = []
    for run in mine:
        for cond in run.conditions:
            q = run.quality(cond)
            if q is None:
                continue
            if run.experiment == "quantization":
                codec, r = cond, 1.0
            elif run.experiment == "combined":
                m = _RETENTION.match(cond)
                if not m:
                    continue
                codec, r = m["name"], float(m["r"])
            else:  # selection: bf16 KV of the kept positions (Q2C only: the selector the pipeline runs)
                m = _RETENTION.match(cond)
                if cond == "full":
                    codec, r = "bf16", 1.0
                elif m and m["name"] == "q2c":
                    codec, r = "bf16", float(m["r"])
                else:
                    continue
            cm = modes.get(codec) or (parse_codec(codec) if codec == "bf16" else None)
            if cm is None or not 0 < r <= 1:
                continue
            out.append(_Candidate(cm.mode, r, cm.plan_name, q, run, size_of(cm), f"codec {cm.codec}"))
    return out


def _assemble(
    pair: str,
    cands: Sequence[_Candidate],
    reference: MeasuredQuality,
    runs_used: Iterable[RunResult],
    metric: str,
    dataset: str,
    min_examples: int,
) -> OperatingPointTable:
    groups: dict[tuple[str, float], list[_Candidate]] = {}
    for c in cands:
        if c.quality.n >= min_examples:
            groups.setdefault((c.mode, round(c.retention, 9)), []).append(c)
    measured = {(c.mode, round(c.retention, 9)) for c in cands}
    too_few = sorted(
        f"{mode}@{r:g} (n={max(c.quality.n for c in cands if (c.mode, round(c.retention, 9)) == (mode, r))})"
        for mode, r in measured - set(groups)
    )
    if not groups:
        raise NoMeasuredPoints(f"no operating point of {pair} has {min_examples} examples yet: {', '.join(too_few)}")
    points = []
    for (_mode, _r), group in sorted(groups.items()):
        best = _best(group)
        others = [c for c in group if c is not best]
        notes = f"{best.notes}; {best.run.label}"
        if others:
            notes += "; also measured in " + ", ".join(f"{c.quality.source} (n={c.quality.n})" for c in others)
        points.append(
            OperatingPoint.from_size(
                best.size(),
                mode=best.mode,
                retention=best.retention,
                plan=best.plan,
                quality_mean=best.quality.mean,
                quality_lo=best.quality.lo,
                quality_hi=best.quality.hi,
                n=best.quality.n,
                model_pair=pair,
                notes=notes,
                source=best.quality.source,
            )
        )
    labels = sorted({r.label for r in runs_used})
    ns = {p.n for p in points} | {reference.n}
    caveat = (
        "; points rest on different numbers of examples (see each point's n)" if len(ns) > 1 else f"; n = {ns.pop()}"
    )
    source = f"scout eval runs ({dataset}, metric {metric}): " + "; ".join(labels) + caveat
    if too_few:
        source += f"; left out with fewer than {min_examples} examples: " + ", ".join(too_few)
    return OperatingPointTable(
        metric=metric,
        source=source,
        reference={pair: reference.mean},
        reference_detail={pair: reference},
        points=points,
    )


def _runs_of(runs: Sequence[RunResult], dataset: str) -> tuple[list[RunResult], str]:
    mine = [r for r in runs if r.dataset == dataset]
    metrics = {r.metric for r in mine}
    if len(metrics) > 1:
        raise ValueError(f"runs on {dataset} disagree on the metric: {sorted(metrics)}")
    return mine, (metrics.pop() if metrics else "f1")


def build_single_table(
    runs: Sequence[RunResult],
    model: str,
    *,
    dataset: str = "squad_v2",
    geometry_of: Callable[[str], KVGeometry] | None = None,
    min_examples: int | None = None,
) -> OperatingPointTable:
    """KV operating points of one model at both ends (``M->M``), relative to its own full-context answer.
    Points and references with fewer than ``min_examples`` (default `MIN_EXAMPLES`) examples are left out."""
    m_ex = MIN_EXAMPLES if min_examples is None else min_examples
    mine, metric = _runs_of(runs, dataset)
    kv_runs = [r for r in mine if r.model == model and r.experiment != "scout"]
    if not kv_runs:
        raise NoMeasuredPoints(f"no quantization, selection or combined run of {model} on {dataset}")
    refs = [qr for qr in _full_answers(kv_runs, model, "edge") if qr[0].n >= m_ex]
    if not refs:
        raise NoMeasuredPoints(
            f"no full-context answer of {model} on {dataset} (bf16 / full condition) with {m_ex} examples"
        )
    cands = _kv_candidates(kv_runs, model, (geometry_of or geometry_of_model)(model))
    if not cands:
        raise NoMeasuredPoints(f"no measured KV operating point of {model} on {dataset}")
    return _assemble(pair_name(model, model), cands, _labelled(*refs[0]), kv_runs, metric, dataset, m_ex)


def _labelled(q: MeasuredQuality, run: RunResult) -> MeasuredQuality:
    return q.model_copy(update={"notes": run.label})


def build_pair_table(
    runs: Sequence[RunResult],
    edge: str,
    cloud: str,
    *,
    dataset: str = "squad_v2",
    geometry_of: Callable[[str], KVGeometry] | None = None,
    include_text: bool = False,
    message_bytes: int | None = None,
    min_examples: int | None = None,
) -> OperatingPointTable:
    """Operating points of ``edge->cloud`` (see the module docstring for which run feeds which point).

    ``message_bytes`` is what a scout/text message carries besides the position set (default: the 32-byte
    document reference of `scout.pipeline`; the question's own bytes vary per request and are not counted).
    Raises `NoMeasuredPoints` when the runs hold no point for the pair or no full-context answer of ``cloud``.
    """
    if edge == cloud:
        return build_single_table(runs, edge, dataset=dataset, geometry_of=geometry_of, min_examples=min_examples)
    m_ex = MIN_EXAMPLES if min_examples is None else min_examples
    mine, metric = _runs_of(runs, dataset)
    if message_bytes is None:
        from scout.pipeline import DOCUMENT_REF_BYTES

        message_bytes = DOCUMENT_REF_BYTES
    pair = pair_name(edge, cloud)
    edge_runs = [r for r in mine if r.model == edge and r.experiment != "scout"]
    scout_runs = [r for r in mine if r.experiment == "scout" and r.model == edge and r.cloud_model == cloud]
    cands: list[_Candidate] = []
    if edge_runs:
        cands += _kv_candidates(edge_runs, edge, (geometry_of or geometry_of_model)(edge))
    scout_size = positions_size_model(message_bytes)
    for run in scout_runs:
        for cond in run.conditions:
            m = _RETENTION.match(cond)
            if m and m["name"] == "scout" and (q := run.quality(cond)) is not None and 0 < float(m["r"]) <= 1:
                cands.append(
                    _Candidate("scout", float(m["r"]), "positions", q, run, lambda: scout_size, "edge's Q2C positions")
                )
    if not cands:
        raise NoMeasuredPoints(
            f"no measured operating point for {pair} on {dataset}: need a quantization/selection/combined run of "
            f"{edge} or a scout run {edge} -> {cloud} under the eval root"
        )
    cloud_refs = [qr for qr in _full_answers(mine, cloud, "cloud") if qr[0].n >= m_ex]
    if not cloud_refs:
        raise NoMeasuredPoints(
            f"no full-context answer of the cloud model {cloud} on {dataset} with {m_ex} examples (a scout run's "
            f"cloud_full, or the bf16/full condition of a {cloud} run): the reference quality of {pair} is unmeasured"
        )
    local_size, text_size = message_size_model(0), message_size_model(message_bytes)
    for q, run in _full_answers(mine, edge, "edge")[:1]:
        cands.append(_Candidate("local", 1.0, "none", q, run, lambda: local_size, "the edge answers alone"))
    if include_text:
        q, run = cloud_refs[0]
        cands.append(_Candidate("text", 1.0, "none", q, run, lambda: text_size, "the cloud reads the whole document"))
    ref_q, ref_run = cloud_refs[0]
    used = {id(r): r for r in [*edge_runs, *scout_runs, ref_run]}
    return _assemble(pair, cands, _labelled(ref_q, ref_run), used.values(), metric, dataset, m_ex)


def _pairs_and_models(runs: Sequence[RunResult]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    pairs = sorted({(r.dataset, r.model, r.cloud_model) for r in runs if r.experiment == "scout" and r.cloud_model})
    singles = sorted({(r.dataset, r.model) for r in runs if r.experiment in ("quantization", "selection", "combined")})
    return [(d, e, c) for d, e, c in pairs if c is not None], singles


def _implied_pairs(
    singles: Sequence[tuple[str, str]], geometry_of: Callable[[str], KVGeometry]
) -> list[tuple[str, str, str]]:
    """Pairs the KV runs imply before any scout run exists: every two models measured on one dataset, the one
    with the smaller KV per token as the edge (the larger model is the cloud's). Models without a spec are
    skipped (no geometry, no size)."""
    per_token: dict[str, int] = {}
    for _, model in singles:
        try:
            g = geometry_of(model)
        except (OSError, RuntimeError, KeyError, ValueError):
            continue
        per_token[model] = g.num_layers * g.kv_heads * (g.head_dim + (g.v_head_dim or g.head_dim))
    out = []
    for d, e in singles:
        for d2, c in singles:
            if d == d2 and e in per_token and c in per_token and per_token[e] < per_token[c]:
                out.append((d, e, c))
    return out


def write_operating_points(
    root: Path,
    summaries: Sequence[dict[str, Any]] | None = None,
    *,
    geometry_of: Callable[[str], KVGeometry] | None = None,
    extra_pairs: Sequence[tuple[str, str]] = (),
) -> dict[str, str]:
    """Write one table per model pair of a scout run, per pair the KV runs imply (`_implied_pairs`) and per
    ``extra_pairs``, and one per single model with KV runs, into ``root/operating_points/``, plus a README listing
    them and any pair that could not be built.

    Returns ``file name -> "ok"`` or the reason it was skipped. A pair that cannot be built is reported, not
    raised: `write_reports` must not lose the per-run reports because one table is incomplete.
    """
    runs = collect_runs(root, summaries)
    pairs, singles = _pairs_and_models(runs)
    datasets = sorted({r.dataset for r in runs}) or ["squad_v2"]
    wanted = [(d, e, c) for d in datasets for e, c in extra_pairs]
    wanted += _implied_pairs(singles, geometry_of or geometry_of_model)
    for job in wanted:
        if job not in pairs:
            pairs.append(job)
    out_dir = root / OUT_DIR
    status: dict[str, str] = {}
    written: list[tuple[str, OperatingPointTable]] = []
    jobs = [(d, m, m) for d, m in singles] + pairs
    for dataset, edge, cloud in jobs:
        name = table_file_name(edge, cloud, dataset)
        try:
            table = build_pair_table(runs, edge, cloud, dataset=dataset, geometry_of=geometry_of)
        except (NoMeasuredPoints, OSError, RuntimeError, KeyError, ValueError) as exc:
            status[name] = f"skipped: {exc}"
            continue
        table.save(out_dir / name)
        written.append((name, table))
        status[name] = "ok"
    if status:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "README.md").write_text(_render_index(written, status), encoding="utf-8")
    return status


def _render_index(written: Sequence[tuple[str, OperatingPointTable]], status: dict[str, str]) -> str:
    lines = [
        "# Operating-point tables",
        "",
        "Written by `scout eval report` from the runs under this folder's parent (`scout_eval.op_tables`). "
        "Quality: condition mean [95 % bootstrap CI] of the source run; relative = mean / the pair's reference "
        "(the cloud model's full-context answer). Bytes at 1024 context tokens, from the codec's size models "
        "(header measured through the wire format). KV modes of a pair `edge->cloud` are the edge model's "
        "measurements: a KV cache only works with the model that made it.",
        "",
    ]
    for name, table in written:
        pair = table.pairs()[0]
        ref = table.reference_detail[pair]
        lines += [
            f"## `{name}`: {pair}",
            "",
            f"Reference: {ref.mean:.3f} [{ref.lo:.3f}, {ref.hi:.3f}] {table.metric}, n = {ref.n} ({ref.source}).",
            "",
            f"| point | plan | {table.metric} [95 % CI] | relative % | n | bytes @1024 | source |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in sorted(table.points, key=lambda p: (-p.bytes_for(1024), p.name)):
            lines.append(
                f"| `{p.name}` | {p.plan} | {p.quality_mean:.3f} [{p.quality_lo:.3f}, {p.quality_hi:.3f}] "
                f"| {100 * table.relative_quality(p):.1f} | {p.n} | {p.bytes_for(1024):,} | {p.source} |"
            )
        lines += ["", f"Runs: {table.source}", ""]
    skipped = {k: v for k, v in status.items() if v != "ok"}
    if skipped:
        lines += ["## Not built", ""] + [f"- `{k}`: {v}" for k, v in skipped.items()] + [""]
    return "\n".join(lines)
