"""`scout bench pipeline`: what running the roles as services over NATS + Redis costs per request, against the
in-process path, and how decode throughput scales from one decoder to two.

Two request kinds, side by side in one run (same model, dtype and one torch thread on both paths):

* *small blob*: a short SQuAD v2 prompt in ``int4`` at retention 0.5 (a few hundred KB crosses the uplink);
* *large blob*: a longer SQuAD v2 prompt in ``full`` (bf16 KV, at least ``large_min_bytes``, 10 MiB by default).

Per request, *compute* is what both paths do identically inside `scout.pipeline` (tokenize, prefill, score,
encode, decode, generate, as each path times them) and *overhead* is the rest of the end-to-end time: for the
services, the plan round trip, staging the raw KV in Redis, the encode request, the upload to and fetch from Redis,
the JetStream enqueue and delivery, the result's way back and the client's request/reply; in process, the plan and
the in-memory hand-offs. The services' end-to-end time is measured by the client (wall clock around the ask).
Throughput: text-mode decode requests enqueued all at once on the work queue, with one decoder process and then
two (`scout_testbed.bench`), requests per second from the first enqueue to the last result.

The NATS + Redis half lives in ``scout_testbed.bench`` (the core library never imports the runtime) and is loaded by
name; it needs a reachable nats-server with JetStream and redis-server (``--nats-url``, ``--redis-url``).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from scout_cli.benchmarks.common import machine_info, markdown_table

COMPUTE_STAGES = ("tokenize", "prefill", "score", "encode", "decode", "generate")
OVERHEAD_STAGES = ("plan", "stage", "raw_fetch", "upload", "enqueue", "fetch", "queue")


class PipelineBenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path = Path("reports/bench_pipeline")
    model: str = "smollm2-135m"
    dtype: str = "fp32"
    requests: int = 20
    throughput_requests: int = 12
    max_new_tokens: int = 8
    large_min_bytes: int = 10 * 1024 * 1024
    redis_url: str = "redis://127.0.0.1:6379/0"
    nats_url: str = "nats://127.0.0.1:4222"


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p99 (linear interpolation) and the sample count."""
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "n": int(arr.size)}


def split(total_s: float, timings: dict[str, float]) -> tuple[float, float]:
    """(compute, overhead) seconds of one request (see the module docstring)."""
    compute = sum(timings.get(s, 0.0) for s in COMPUTE_STAGES)
    return compute, max(0.0, total_s - compute)


def _pick_prompts(lm: Any, min_bytes: int) -> tuple[Any, Any, int]:
    """A short example, and the shortest one whose full-mode blob reaches ``min_bytes`` (with its size)."""
    from scout.datasets import load_examples
    from scout.prompts import build_prompt

    small = load_examples("squad_v2", n=1, seed=7, answerable_only=True, max_context_chars=600)[0]
    per_token = 2 * lm.spec.num_layers * lm.spec.num_kv_heads * lm.spec.head_dim * 2 + 4  # bf16 KV + int32 position
    best = None
    for ex in load_examples("squad_v2", n=400, seed=11, answerable_only=True, max_context_chars=4000):
        n = len(build_prompt(lm.tokenizer, question=ex.question, context=ex.context).input_ids) - 1
        if n * per_token >= min_bytes and (best is None or n < best[1]):
            best = (ex, n)
    if best is None:
        raise ValueError(f"no SQuAD v2 prompt makes a {min_bytes}-byte blob with {lm.spec.name}")
    return small, best[0], best[1] * per_token


def run_pipeline_bench(cfg: PipelineBenchConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run both halves and write ``results.json`` and ``README.md`` into ``cfg.out``."""
    import torch

    from scout.inference import warmup
    from scout.models import load_model
    from scout.pipeline import answer_inprocess

    torch.set_num_threads(1)  # what every service process runs with (OMP_NUM_THREADS=1)
    lm = load_model(cfg.model, dtype=cfg.dtype, device="cpu")
    warmup(lm)
    small, large, large_bytes = _pick_prompts(lm, cfg.large_min_bytes)
    cases = [
        {"label": "small blob (int4@0.5, short prompt)", "ex": small, "mode": "int4", "retention": 0.5},
        {"label": f"large blob (full, ~{large_bytes / 2**20:.1f} MiB)", "ex": large, "mode": "full", "retention": None},
    ]

    inproc: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        rows = []
        for i in range(cfg.requests + 1):
            t0 = time.perf_counter()
            a = answer_inprocess(
                lm,
                lm,
                question=case["ex"].question,
                document=case["ex"].context,
                mode=case["mode"],
                retention=case["retention"],
                max_new_tokens=cfg.max_new_tokens,
            )
            wall = time.perf_counter() - t0
            if i:
                rows.append({"wall_s": wall, "timings": a.timings, "bytes_sent": a.bytes_sent, "answer": a.answer})
        inproc[case["label"]] = rows
        progress(f"in-process: {case['label']}: {len(rows)} requests")

    bench = importlib.import_module("scout_testbed.bench")
    svc = bench.run_services_bench(
        model=cfg.model,
        dtype=cfg.dtype,
        model_fingerprint=lm.spec.fingerprint,
        nats_url=cfg.nats_url,
        redis_url=cfg.redis_url,
        cases=[
            bench.BenchCase(
                label=c["label"],
                question=c["ex"].question,
                document=c["ex"].context,
                mode=c["mode"],
                retention=c["retention"],
                max_new_tokens=cfg.max_new_tokens,
            )
            for c in cases
        ],
        requests=cfg.requests,
        throughput_case=bench.BenchCase(
            label="throughput",
            question=small.question,
            document=small.context,
            mode="text",
            max_new_tokens=cfg.max_new_tokens,
        ),
        throughput_requests=cfg.throughput_requests,
        progress=progress,
    )

    summary: dict[str, Any] = {"cases": {}, "throughput": svc["throughput"]}
    for case in cases:
        label = case["label"]
        entry: dict[str, Any] = {"mode": case["mode"], "retention": case["retention"] or 1.0}
        for path, rows in (("in_process", inproc[label]), ("services", svc["cases"][label])):
            parts = [split(r["wall_s"], r["timings"]) for r in rows]
            entry[path] = {
                "bytes_sent": rows[0]["bytes_sent"],
                "total_s": percentiles([r["wall_s"] for r in rows]),
                "compute_s": percentiles([c for c, _ in parts]),
                "overhead_s": percentiles([o for _, o in parts]),
                "answers": sorted({r["answer"] for r in rows}),
            }
        entry["services"]["overhead_stages_p50_s"] = {
            s: float(np.median([r["timings"].get(s, 0.0) for r in svc["cases"][label]])) for s in OVERHEAD_STAGES
        }
        entry["same_answer"] = entry["in_process"]["answers"] == entry["services"]["answers"]
        summary["cases"][label] = entry
    result = {
        "config": cfg.model_dump(mode="json"),
        "machine": {**machine_info(), "load_average": list(os.getloadavg())},
        "summary": summary,
        "raw": {"in_process": inproc, "services": svc["cases"]},
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (cfg.out / "README.md").write_text(render_markdown(result), encoding="utf-8")
    return result


def render_markdown(result: dict[str, Any]) -> str:
    cfg, machine, summary = result["config"], result["machine"], result["summary"]
    ms = 1000.0
    rows = []
    for label, entry in summary["cases"].items():
        for path in ("in_process", "services"):
            e = entry[path]
            rows.append(
                [
                    label,
                    path.replace("_", "-"),
                    f"{e['bytes_sent']:,}",
                    e["total_s"]["n"],
                    e["total_s"]["p50"] * ms,
                    e["total_s"]["p99"] * ms,
                    e["compute_s"]["p50"] * ms,
                    e["overhead_s"]["p50"] * ms,
                    e["overhead_s"]["p99"] * ms,
                ]
            )
    stage_rows = [
        [label, *(entry["services"]["overhead_stages_p50_s"][s] * ms for s in OVERHEAD_STAGES)]
        for label, entry in summary["cases"].items()
    ]
    tp_rows = [
        [
            n,
            t["requests"],
            t["seconds"],
            t["requests_per_s"],
            ", ".join(f"{k}: {v}" for k, v in t["by_decoder"].items()),
        ]
        for n, t in summary["throughput"].items()
    ]
    same = all(e["same_answer"] for e in summary["cases"].values())
    one, two = summary["throughput"].get("1"), summary["throughput"].get("2")
    ratio = two["requests_per_s"] / one["requests_per_s"] if one and two else math.nan
    speedup = f"{ratio:.2f}x" if math.isfinite(ratio) else "n/a"
    why = (
        " The work is shared between the two (see the last column) but each decode is CPU-bound: a second decoder "
        "only adds throughput when it gets a core (or a GPU) of its own, which this machine, with "
        f"{machine['cpu_count']} CPUs also busy with other work, does not give it."
        if math.isfinite(ratio) and ratio < 1.3
        else ""
    )
    return "\n".join(
        [
            "# Pipeline overhead: NATS + Redis services vs the in-process path",
            "",
            "Regenerate: `scout bench pipeline` (needs nats-server with JetStream and redis-server). "
            f"Model `{cfg['model']}` ({cfg['dtype']}) on both ends, one torch thread per process, "
            f"{cfg['max_new_tokens']} new tokens; {machine['cpu_count']} CPUs, load average "
            f"{', '.join(f'{x:.2f}' for x in machine['load_average'])} at the end of the run (a shared machine: "
            "absolute times include contention).",
            "",
            "*Compute* = tokenize + prefill + score + encode + decode + generate as the pipeline functions time "
            "them; *overhead* = end-to-end time minus compute (for the services: plan round trip, raw KV staged "
            "in Redis, encode request, upload to and fetch from Redis, JetStream enqueue and delivery, the reply, "
            "the client's request/reply; in process: the plan and in-memory hand-offs). Times in ms.",
            "",
            markdown_table(
                [
                    "request",
                    "path",
                    "bytes sent",
                    "n",
                    "total p50",
                    "total p99",
                    "compute p50",
                    "overhead p50",
                    "overhead p99",
                ],
                rows,
            ),
            "",
            f"Same answers on both paths: {'yes' if same else 'NO'}.",
            "",
            "Where the services' overhead goes (medians, ms):",
            "",
            markdown_table(["request", *OVERHEAD_STAGES], stage_rows),
            "",
            "## Decode throughput, 1 vs 2 decoder processes",
            "",
            "Text-mode decode requests (short SQuAD v2 prompt) enqueued at once on the JetStream work queue; "
            f"time from the first enqueue to the last result. Two decoders: {speedup} the throughput of one "
            f"(on {machine['cpu_count']} shared CPU cores).{why}",
            "",
            markdown_table(["decoders", "requests", "seconds", "requests/s", "requests per decoder"], tp_rows),
            "",
        ]
    )
