"""`scout bench selection`: scoring time and peak memory per selector and context length, eager vs hook Q2C.

Each (model, length, method) is measured in this process: time of the scoring prefill + score + select, and the
peak RSS growth while it runs. Eager Q2C needs every layer's [heads, n, n] attention (what `output_attentions`
returns); when that estimate exceeds the memory budget it is not run and the row says how much it would need,
which is the point of the hook-based implementation. Results append to a JSONL log, so a long run resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scout.machine import machine_info
from scout_cli.benchmarks.common import PeakRSS, ResultLog, release_free_memory, timed
from scout_eval.markdown import markdown_table

VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("q2c (hook)", "q2c", {}),
    ("q2c (eager)", "q2c", {"impl": "eager"}),
    ("q2c mean (hook)", "q2c", {"layers": "mean"}),
    ("snapkv", "snapkv", {}),
    ("h2o", "h2o", {}),
    ("knorm", "knorm", {}),
    ("streaming", "streaming", {}),
    ("random", "random", {}),
]
GIB = 1 << 30


@dataclass
class SelectionBenchConfig:
    models: Sequence[str] = ("smollm2-135m", "qwen2.5-coder-0.5b")
    lengths: Sequence[int] = (256, 1024, 4096, 8192)
    memory_budget_gib: float = 8.0
    repeats: int = 3
    out: Path = Path("reports/bench_selection")
    dtype: str = "bf16"
    methods: Sequence[str] | None = None  # labels of VARIANTS to run; None = all


def long_context(tokenizer: Any, n_tokens: int) -> tuple[str, str]:
    """A real document of exactly `n_tokens` tokens (distinct SQuAD v2 paragraphs, cut at a token boundary) and
    a real question about its first paragraph."""
    from scout.datasets import load_examples

    examples = load_examples("squad_v2", seed=11, answerable_only=True)
    seen: set[str] = set()
    paragraphs: list[str] = []
    question = examples[0].question
    total = 0
    for ex in examples:
        if ex.context in seen:
            continue
        seen.add(ex.context)
        paragraphs.append(ex.context)
        total += len(tokenizer(ex.context, add_special_tokens=False)["input_ids"])
        if total > n_tokens * 1.05 + 16:
            break
    text = "\n\n".join(paragraphs)
    enc = tokenizer(" " + text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) < n_tokens:
        raise ValueError(f"not enough text for {n_tokens} tokens")
    cut = enc["offset_mapping"][n_tokens - 1][1] - 1  # -1: the leading space
    return text[:cut], question


def eager_bytes(spec: Any, n: int, dtype_bytes: int) -> int:
    """Memory eager attentions need: every layer's [heads, n, n] kept, plus one layer's fp32 softmax scratch."""
    return spec.num_layers * spec.num_heads * n * n * dtype_bytes + 2 * spec.num_heads * n * n * 4


def run_selection_bench(cfg: SelectionBenchConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from scout.inference import warmup
    from scout.models import load_model

    log = ResultLog(cfg.out / "results.jsonl", ("model", "length", "method"))
    for model_name in cfg.models:
        lm = load_model(model_name, dtype=cfg.dtype)
        warmup(lm)
        for n in cfg.lengths:
            _bench_length(lm, n, cfg, log, progress)
    return write_selection_report(cfg, log.rows)


def _bench_length(lm: Any, n: int, cfg: SelectionBenchConfig, log: ResultLog, progress: Callable[[str], None]) -> None:
    from scout.inference import prefill
    from scout.positions import encode_positions, study_bytes
    from scout.prompts import build_prompt
    from scout.selection import get_selector, score_prompt

    model_name = lm.spec.name
    dtype_bytes = 2 if cfg.dtype in ("bf16", "fp16") else 4
    context, question = long_context(lm.tokenizer, n)
    prompt = build_prompt(lm.tokenizer, context=context, question=question)
    repeats = cfg.repeats if n <= 1024 else 1
    base = {"model": model_name, "length": n, "prompt_tokens": len(prompt)}
    if not log.has(model=model_name, length=n, method="prefill only (sdpa)"):
        release_free_memory()
        with PeakRSS() as mem:
            med, samples, _ = timed(lambda: prefill(lm, prompt.input_ids), repeats)
        log.add(
            {
                **base,
                "method": "prefill only (sdpa)",
                "seconds": med,
                "samples": samples,
                "peak_mib": mem.peak_delta / 2**20,
                "status": "ok",
            }
        )
        progress(f"{model_name} n={n} prefill {med:.2f}s")
    for label, name, options in VARIANTS:
        if log.has(model=model_name, length=n, method=label) or (cfg.methods and label not in cfg.methods):
            continue
        row: dict[str, Any] = {**base, "method": label}
        if options.get("impl") == "eager":
            need = eager_bytes(lm.spec, len(prompt), dtype_bytes)
            row["eager_estimate_gib"] = need / GIB
            if need > cfg.memory_budget_gib * GIB:
                row.update(status=f"over budget: needs ~{need / GIB:.1f} GiB > {cfg.memory_budget_gib:g} GiB")
                log.add(row)
                progress(f"{model_name} n={n} {label}: {row['status']}")
                continue
        sel = get_selector(name, **options)

        def run(sel: Any = sel) -> Any:
            scores = sel.score(score_prompt(lm, prompt, [sel]))
            return sel.select(scores, 0.75)

        release_free_memory()
        with PeakRSS() as mem:
            med, samples, kept = timed(run, repeats)
        blob = encode_positions(kept, len(prompt.context))
        row.update(
            seconds=med,
            samples=samples,
            peak_mib=mem.peak_delta / 2**20,
            status="ok",
            positions_bytes_75=len(blob),
            study_bytes_75=study_bytes(len(kept)),
        )
        log.add(row)
        progress(f"{model_name} n={n} {label}: {med:.2f}s, peak +{row['peak_mib']:.0f} MiB")


def write_selection_report(cfg: SelectionBenchConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    cfg.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(), "memory_budget_gib": cfg.memory_budget_gib, "rows": rows}
    (cfg.out / "results.json").write_text(json.dumps(result, indent=2))
    headers = ["model", "context tokens", "method", "seconds (median)", "peak RSS growth (MiB)", "note"]
    table = []
    for r in sorted(rows, key=lambda r: (r["model"], r["length"], r["method"])):
        note = r["status"] if r["status"] != "ok" else ""
        if r.get("eager_estimate_gib") and r["status"] == "ok":
            note = f"eager estimate {r['eager_estimate_gib']:.2f} GiB"
        if "positions_bytes_75" in r:
            note += f" positions@75%: {r['positions_bytes_75']} B vs {r['study_bytes_75']} B int32"
        table.append(
            [r["model"], r["length"], r["method"], r.get("seconds", "—"), r.get("peak_mib", "—"), note.strip()]
        )
    md = [
        "# Selection benchmark",
        "",
        "Scoring = one prefill of the whole prompt carrying what the selector reads, then score and select (75 %).",
        "Peak RSS growth is sampled every 2 ms during that call. Eager Q2C keeps every layer's [heads, n, n]",
        f"attention; it is not run when its estimate exceeds the {cfg.memory_budget_gib:g} GiB budget.",
        "Regenerate: `scout bench selection` (resumes from results.jsonl; delete it to start over). Timings are",
        "medians on this machine as it was (see the machine line; a 2-core box shared with other jobs is noisy):",
        "compare methods within one model and length, not across runs.",
        "",
        markdown_table(headers, table),
        "",
        f"Machine: {json.dumps(result['machine'])}",
    ]
    (cfg.out / "README.md").write_text("\n".join(md) + "\n")
    _plot(cfg.out / "selection_bench.png", rows)
    return result


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for j, model in enumerate(models):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["length"], r) for r in rows if r["model"] == model and r["method"] == method)
            ok = [(n, r) for n, r in pts if r["status"] == "ok"]
            if not ok:
                continue
            xs = [n for n, _ in ok]
            axes[0][j].plot(xs, [r["seconds"] for _, r in ok], marker="o", label=method)
            axes[1][j].plot(xs, [max(r["peak_mib"], 1e-1) for _, r in ok], marker="o", label=method)
        for i, ylabel in enumerate(("seconds", "peak RSS growth (MiB)")):
            ax = axes[i][j]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context tokens")
            ax.set_ylabel(ylabel)
            ax.set_title(model)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][j].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
