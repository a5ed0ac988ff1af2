"""Latency breakdown per mode (the evaluation's experiment 5): prefill, score, encode, transfer, decode, generate.

Why it is assembled here instead of timed inside `scout eval run`: the stage costs are measured once per model pair
by `scout bench stages` (the real pipeline functions, CPU time, fitted linearly in the context length:
``reports/stages/<table>.json``), the bytes of every operating point come from the codec's own size models in the
operating-point tables `scout eval report` writes. Joining the two gives, for every measured point, what a request
costs end to end at a given uplink rate, next to the quality that point measured; the transfer is
``8 * bytes / rate`` (no queueing, one request alone on the link).

The bytes count the whole hand-off cache: the context (or its kept part) and the prompt tokens around it
(instruction, question), whose number is the median over the dataset's saved samples (``extra_tokens``).
Stated approximations: KV stages were timed at retention 1 (encode/decode of a kept subset are upper bounds) and
scout's cloud re-prefill at the bench's ``scout_retention``; both ends ran on the same CPU (a cloud GPU would
shrink decode and generate).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scout.datasets import DATASETS
from scout.policy.operating_points import OperatingPointTable
from scout.policy.planner import StageTimes

__all__ = ["breakdown_rows", "median_extra_tokens", "write_latency"]

OUT_DIR = "latency"
DEFAULT_RATES_BPS: tuple[float, ...] = (1e6, 10e6, 100e6)
STAGES = ("prefill", "score", "encode", "decode", "generate")


def median_extra_tokens(root: Path, dataset: str, model: str) -> int:
    """Median prompt tokens outside the context minus the last one, over ``model``'s saved ``dataset`` samples."""
    values = []
    for path in sorted(root.glob(f"*/{dataset}__{model}*/samples.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                meta = json.loads(line).get("meta") or {}
                if "prompt_tokens" in meta and "context_tokens" in meta:
                    values.append(int(meta["prompt_tokens"]) - 1 - int(meta["context_tokens"]))
    return int(statistics.median(values)) if values else 0


def breakdown_rows(
    table: OperatingPointTable,
    stages: StageTimes,
    *,
    context_tokens: int,
    extra_tokens: int = 0,
    rates_bps: Sequence[float] = DEFAULT_RATES_BPS,
) -> list[dict[str, Any]]:
    """One row per operating point whose mode has stage times: seconds per stage, bytes, transfer and total
    seconds at each rate, and the point's relative quality. Points are ordered by bytes, largest first."""
    if context_tokens <= 0:
        raise ValueError(f"context_tokens must be > 0, got {context_tokens}")
    if not rates_bps or any(not r > 0 for r in rates_bps):
        raise ValueError("rates must be > 0 bit/s")
    rows = []
    for p in table.points:
        if p.mode not in stages.modes:
            continue
        ms = stages.for_mode(p.mode)
        seconds = {s: getattr(ms, s).at(context_tokens) for s in STAGES}
        nbytes = p.bytes_for(context_tokens, extra_tokens)
        compute = sum(seconds.values())
        transfer = {f"{r:g}": 8.0 * nbytes / r for r in rates_bps}
        rows.append(
            {
                "point": p.name,
                "mode": p.mode,
                "retention": p.retention,
                "bytes": nbytes,
                "seconds": seconds,
                "compute_s": compute,
                "transfer_s": transfer,
                "total_s": {k: compute + t for k, t in transfer.items()},
                "relative_quality": table.relative_quality(p),
                "quality": [p.quality_mean, p.quality_lo, p.quality_hi],
                "n": p.n,
            }
        )
    rows.sort(key=lambda r: (-r["bytes"], r["point"]))
    return rows


def _mbit(rate: str) -> str:
    return f"{float(rate) / 1e6:g} Mbit/s"


def _render(sections: list[dict[str, Any]], rates: Sequence[float]) -> str:
    keys = [f"{r:g}" for r in rates]
    lines = [
        "# Latency breakdown per mode",
        "",
        "Written by `scout eval report` (`scout_eval.latency`): the stage costs measured by `scout bench stages` "
        "(CPU seconds, linear in context tokens; both ends on one CPU) joined with the operating points' bytes "
        "(the codec's size models; the whole hand-off cache, context plus the prompt tokens around it) and "
        "measured quality. Transfer = 8 x bytes / rate, one request alone on the link. KV stages were timed at "
        "retention 1, so encode/decode of `@r` points are upper bounds.",
        "",
    ]
    for sec in sections:
        lines += [
            f"## `{sec['table']}` at {sec['context_tokens']} context tokens (+{sec['extra_tokens']} prompt tokens)",
            "",
            f"Stage times: `{sec['stages_file']}` ({sec['stages_source']}).",
            "",
            "| point | bytes | prefill s | score s | encode s | "
            + " | ".join(f"transfer @{_mbit(k)} s" for k in keys)
            + " | decode s | generate s | "
            + " | ".join(f"total @{_mbit(k)} s" for k in keys)
            + " | quality (relative) |",
            "|---|---|---|---|---|" + "---|" * len(keys) + "---|---|" + "---|" * len(keys) + "---|",
        ]
        for r in sec["rows"]:
            s = r["seconds"]
            lines.append(
                f"| `{r['point']}` | {r['bytes']:,} | {s['prefill']:.2f} | {s['score']:.3f} | {s['encode']:.3f} | "
                + " | ".join(f"{r['transfer_s'][k]:.3f}" for k in keys)
                + f" | {s['decode']:.2f} | {s['generate']:.2f} | "
                + " | ".join(f"{r['total_s'][k]:.2f}" for k in keys)
                + f" | {100 * r['relative_quality']:.1f} % (n={r['n']}) |"
            )
        lines += ["", f"![stages]({sec['plot']})", ""]
    return "\n".join(lines) + "\n"


def _plot(rows: Sequence[dict[str, Any]], rate_key: str, title: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [r["point"] for r in rows]
    parts = [*STAGES[:3], "transfer", *STAGES[3:]]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.6))
    left = [0.0] * len(rows)
    for part in parts:
        vals = [r["transfer_s"][rate_key] if part == "transfer" else r["seconds"][part] for r in rows]
        ax.barh(names, vals, left=left, label=part)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds (transfer at {_mbit(rate_key)})")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_latency(
    root: Path,
    stages_dir: Path,
    *,
    context_tokens: int = 512,
    rates_bps: Sequence[float] = DEFAULT_RATES_BPS,
    plot_rate_bps: float = 10e6,
) -> dict[str, str]:
    """For every operating-point table under ``root/operating_points`` with stage times of the same name in
    ``stages_dir``: the breakdown as ``root/latency/README.md``, ``latency.json`` and one PNG per table.
    Returns ``table file -> "ok"`` or why it was skipped (no stage times)."""
    status: dict[str, str] = {}
    sections: list[dict[str, Any]] = []
    rates = sorted({*rates_bps, plot_rate_bps})
    for table_path in sorted((root / "operating_points").glob("*.json")):
        stages_path = stages_dir / table_path.name
        if not stages_path.is_file():
            status[table_path.name] = f"skipped: no stage times {stages_path}"
            continue
        table = OperatingPointTable.load(table_path)
        stages = StageTimes.load(stages_path)
        pair = table.pairs()[0]
        edge = pair.split("->")[0]
        suffix = table_path.stem.rsplit("__", 1)[-1]  # `table_file_name` appends the dataset unless SQuAD v2
        dataset = suffix if suffix in DATASETS else "squad_v2"
        extra = median_extra_tokens(root, dataset, edge)
        rows = breakdown_rows(table, stages, context_tokens=context_tokens, extra_tokens=extra, rates_bps=rates)
        plot = f"{table_path.stem}.png"
        _plot(rows, f"{plot_rate_bps:g}", f"{pair}: {context_tokens} context tokens", root / OUT_DIR / plot)
        sections.append(
            {
                "table": table_path.name,
                "pair": pair,
                "context_tokens": context_tokens,
                "extra_tokens": extra,
                "stages_file": str(stages_path),
                "stages_source": stages.source.split(" (")[0],
                "plot": plot,
                "rows": rows,
            }
        )
        status[table_path.name] = "ok"
    if sections:
        out = root / OUT_DIR
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency.json").write_text(json.dumps({"rates_bps": rates, "sections": sections}, indent=2) + "\n")
        (out / "README.md").write_text(_render(sections, rates), encoding="utf-8")
    return status
