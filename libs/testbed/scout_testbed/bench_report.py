"""The Markdown report of ``scout bench pipeline`` (`scout_testbed.bench`): per-request overhead of the services
against the in-process path, where the overhead goes, and decode throughput with one and two decoders."""

from __future__ import annotations

import math
from typing import Any

from scout_eval.markdown import markdown_table

__all__ = ["OVERHEAD_STAGES", "render_markdown"]

OVERHEAD_STAGES = ("plan", "stage", "raw_fetch", "upload", "enqueue", "fetch", "queue")
"""The services' stages outside `scout_testbed.bench.COMPUTE_STAGES`, reported one by one."""


def render_markdown(result: dict[str, Any]) -> str:
    """``README.md`` of a run, from what `scout_testbed.bench.run_pipeline_bench` returned."""
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
