"""`scout bench pipeline`: what running the roles as services over NATS + Redis costs per request, against the
in-process path, and how decode throughput scales from one decoder to two. Both halves are here, so what is
measured (the cases, the stages that count as compute, the percentiles) has one definition.

Two request kinds (`BenchCase`), run the same way on both paths (same model, dtype and one torch thread):

* *small blob*: a short SQuAD v2 prompt in ``int4`` at retention 0.5 (a few hundred KB crosses the uplink);
* *large blob*: a longer SQuAD v2 prompt in ``full`` (bf16 KV, at least ``large_min_bytes``, 10 MiB by default).

Per request, *compute* is what both paths do identically inside `scout.pipeline` (`COMPUTE_STAGES`, as each path
times them) and *overhead* is the rest of the end-to-end time (`split`): for the services, the plan round trip,
staging the raw KV in Redis, the encode request, the upload to and fetch from Redis, the JetStream enqueue and
delivery, the result's way back and the client's request/reply; in process, the plan and the in-memory hand-offs.
The services' end-to-end time is measured by the client (wall clock around the ask).

The services half starts policy, quantizer, one decoder and the selector as OS processes (`scout_testbed.launcher`)
under a fresh namespace against a reachable nats-server with JetStream and redis-server, times ``requests`` asks
per case (plus one discarded warm-up ask), then measures decode throughput: ``throughput_requests`` text-mode decode
requests enqueued at once straight onto the work queue (the selector is not in that loop, so the decoders are what
is measured), with one decoder and then with two, requests per second from the first enqueue to the last result.
Everything it created (processes, Redis keys, the JetStream stream) is removed at the end.
The report is `scout_testbed.bench_report`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, SecretStr

from scout.machine import machine_info
from scout_runtime.bus import Msg, NatsBus, WorkQueueSpec
from scout_runtime.errors import ScoutError
from scout_runtime.messages import AskRequest, DecodeRequest, DecodeResult, parse_reply
from scout_runtime.settings import Settings
from scout_runtime.store import RedisStore
from scout_services.client import ask
from scout_testbed.bench_report import OVERHEAD_STAGES, render_markdown
from scout_testbed.launcher import RoleProcess, role_env, spawn_role, wait_ready

__all__ = [
    "COMPUTE_STAGES",
    "BenchCase",
    "PipelineBenchConfig",
    "percentiles",
    "run_pipeline_bench",
    "split",
]

COMPUTE_STAGES = ("tokenize", "prefill", "score", "encode", "decode", "generate")
Progress = Callable[[str], None]


class PipelineBenchConfig(BaseModel):
    """What `run_pipeline_bench` runs (the `scout bench pipeline` options)."""

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


class BenchCase(BaseModel):
    """One kind of request the benchmark repeats, on both paths."""

    label: str
    question: str
    document: str
    mode: str
    retention: float | None = None
    max_new_tokens: int = 8


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p99 (linear interpolation) and the sample count."""
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "n": int(arr.size)}


def split(total_s: float, timings: dict[str, float]) -> tuple[float, float]:
    """(compute, overhead) seconds of one request (see the module docstring)."""
    compute = sum(timings.get(s, 0.0) for s in COMPUTE_STAGES)
    return compute, max(0.0, total_s - compute)


def _row(wall_s: float, timings: dict[str, float], bytes_sent: int, answer: str, mode: str) -> dict[str, Any]:
    """One timed request, the same fields from either path."""
    return {"wall_s": wall_s, "timings": dict(timings), "bytes_sent": bytes_sent, "answer": answer, "mode": mode}


def _pick_cases(lm: Any, cfg: PipelineBenchConfig) -> tuple[list[BenchCase], BenchCase]:
    """The small and the large case (the shortest prompt whose full-mode blob reaches ``large_min_bytes``), and the
    throughput case (the small prompt in text mode)."""
    from scout.datasets import load_examples
    from scout.prompts import build_prompt

    small = load_examples("squad_v2", n=1, seed=7, answerable_only=True, max_context_chars=600)[0]
    per_token = 2 * lm.spec.num_layers * lm.spec.num_kv_heads * lm.spec.head_dim * 2 + 4  # bf16 KV + int32 position
    best = None
    for ex in load_examples("squad_v2", n=400, seed=11, answerable_only=True, max_context_chars=4000):
        n = len(build_prompt(lm.tokenizer, question=ex.question, context=ex.context).input_ids) - 1
        if n * per_token >= cfg.large_min_bytes and (best is None or n < best[1]):
            best = (ex, n)
    if best is None:
        raise ValueError(f"no SQuAD v2 prompt makes a {cfg.large_min_bytes}-byte blob with {lm.spec.name}")
    large, large_bytes = best[0], best[1] * per_token
    common = {"max_new_tokens": cfg.max_new_tokens}
    cases = [
        BenchCase(
            label="small blob (int4@0.5, short prompt)",
            question=small.question,
            document=small.context,
            mode="int4",
            retention=0.5,
            **common,
        ),
        BenchCase(
            label=f"large blob (full, ~{large_bytes / 2**20:.1f} MiB)",
            question=large.question,
            document=large.context,
            mode="full",
            **common,
        ),
    ]
    throughput = BenchCase(label="throughput", question=small.question, document=small.context, mode="text", **common)
    return cases, throughput


def run_pipeline_bench(cfg: PipelineBenchConfig, progress: Progress = lambda _: None) -> dict[str, Any]:
    """Run both halves and write ``results.json`` and ``README.md`` into ``cfg.out``."""
    import torch

    from scout.inference import warmup
    from scout.models import load_model

    torch.set_num_threads(1)  # what every service process runs with (OMP_NUM_THREADS=1)
    lm = load_model(cfg.model, dtype=cfg.dtype, device="cpu")
    warmup(lm)
    cases, throughput_case = _pick_cases(lm, cfg)
    inproc: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        inproc[case.label] = _inprocess(lm, case, cfg.requests)
        progress(f"in-process: {case.label}: {len(inproc[case.label])} requests")
    svc = asyncio.run(_services(cfg, lm.spec.fingerprint, cases, throughput_case, progress))
    result = {
        "config": cfg.model_dump(mode="json"),
        "machine": machine_info(load_average=True),
        "summary": summarize(cases, inproc, svc),
        "raw": {"in_process": inproc, "services": svc["cases"]},
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (cfg.out / "README.md").write_text(render_markdown(result), encoding="utf-8")
    return result


def summarize(cases: list[BenchCase], inproc: dict[str, list[dict[str, Any]]], svc: dict[str, Any]) -> dict[str, Any]:
    """Per case and path: bytes sent, total/compute/overhead percentiles, the answers; the services' overhead by
    stage (medians); whether both paths answered alike; and the throughput per decoder count."""
    summary: dict[str, Any] = {"cases": {}, "throughput": svc["throughput"]}
    for case in cases:
        label = case.label
        entry: dict[str, Any] = {"mode": case.mode, "retention": case.retention or 1.0}
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
    return summary


def _inprocess(lm: Any, case: BenchCase, requests: int) -> list[dict[str, Any]]:
    """``requests`` timed `scout.pipeline.answer_inprocess` calls (after one discarded warm-up)."""
    from scout.pipeline import answer_inprocess

    rows = []
    for i in range(requests + 1):
        t0 = time.perf_counter()
        a = answer_inprocess(
            lm,
            lm,
            question=case.question,
            document=case.document,
            mode=case.mode,
            retention=case.retention,
            max_new_tokens=case.max_new_tokens,
        )
        wall = time.perf_counter() - t0
        if i:
            rows.append(_row(wall, a.timings, a.bytes_sent, a.answer, a.mode))
    return rows


async def _services(
    cfg: PipelineBenchConfig,
    model_fingerprint: str,
    cases: list[BenchCase],
    throughput_case: BenchCase,
    progress: Progress,
) -> dict[str, Any]:
    """The services half: per-case ask measurements and per-decoder-count throughput."""
    namespace = "bench" + uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"scout-{namespace}-"))
    extra = {
        "SCOUT_SELECTOR_MODEL": cfg.model,
        "SCOUT_SELECTOR_DTYPE": cfg.dtype,
        "SCOUT_DECODER_MODEL": cfg.model,
        "SCOUT_DECODER_DTYPE": cfg.dtype,
        "SCOUT_POLICY_EDGE_MODEL": cfg.model,
        "SCOUT_REQUEST_TIMEOUT_S": "600",
        "SCOUT_ACK_WAIT_S": "30",
    }

    def spawn(role: str, name: str) -> RoleProcess:
        env = role_env(name=name, namespace=namespace, nats_url=cfg.nats_url, store_url=cfg.redis_url, extra=extra)
        return spawn_role(role, name, env, workdir)

    procs = [
        spawn("transport_policy", "policy"),
        spawn("quantizer", "quantizer"),
        spawn("cloud_decoder", "decoder-1"),
        spawn("selector", "selector"),
    ]
    settings = Settings(nats_url=SecretStr(cfg.nats_url), namespace=namespace, request_timeout_s=600)
    try:
        progress(f"starting {len(procs)} role processes (namespace {namespace})")
        await asyncio.to_thread(wait_ready, procs, 600.0)
        out: dict[str, Any] = {"namespace": namespace, "cases": {}, "throughput": {}}
        for case in cases:
            out["cases"][case.label] = await _asks(settings, case, cfg.requests)
            progress(f"services: {case.label}: {len(out['cases'][case.label])} asks")
        for n in (1, 2):
            if n == 2:
                procs.append(spawn("cloud_decoder", "decoder-2"))
                await asyncio.to_thread(wait_ready, procs[-1:], 600.0)
            out["throughput"][str(n)] = await _throughput(
                settings, cfg, throughput_case, cfg.throughput_requests, model_fingerprint
            )
            progress(f"services: {n} decoder(s): {out['throughput'][str(n)]['requests_per_s']:.3f} requests/s")
        return out
    finally:
        for proc in procs:
            if proc.alive:
                proc.popen.terminate()
        for proc in procs:
            proc.stop(timeout_s=60)
        await _cleanup(settings, cfg.redis_url)
        shutil.rmtree(workdir, ignore_errors=True)


async def _asks(settings: Settings, case: BenchCase, requests: int) -> list[dict[str, Any]]:
    """``requests`` timed asks through `scout_services.client.ask` (after one discarded warm-up)."""
    rows = []
    for i in range(requests + 1):
        req = AskRequest(
            request_id=uuid.uuid4().hex,
            device_id="bench",
            document=case.document,
            question=case.question,
            deadline_ms=600_000,
            max_new_tokens=case.max_new_tokens,
            mode=case.mode,  # type: ignore[arg-type]
            retention=case.retention,
        )
        t0 = time.perf_counter()
        reply = await ask(req, settings=settings, timeout_s=600)
        wall = time.perf_counter() - t0
        if i:
            rows.append(_row(wall, reply.timings, reply.bytes_sent, reply.answer, reply.mode))
    return rows


async def _throughput(
    settings: Settings, cfg: PipelineBenchConfig, case: BenchCase, k: int, model_fingerprint: str
) -> dict[str, Any]:
    """Enqueue ``k`` text-mode decode requests at once; seconds until the last result, and who did what."""
    subjects = settings.subjects()
    store = RedisStore(cfg.redis_url, prefix=settings.key_prefix(), default_ttl_s=600)
    try:
        doc_ref = await store.put_document(case.document)
    finally:
        await store.close()
    bus = await NatsBus.connect(settings, name="bench-throughput", poll_s=0.2)
    results: list[tuple[float, DecodeResult]] = []
    done = asyncio.Event()
    token = f"bench-{uuid.uuid4().hex[:8]}"

    async def on_result(msg: Msg) -> None:
        try:
            result = parse_reply(DecodeResult, msg.data)
        except ScoutError:
            return
        results.append((time.perf_counter(), result))
        if len(results) >= k:
            done.set()

    try:
        await bus.subscribe(subjects.result(token), on_result, concurrency=8)
        t0 = time.perf_counter()
        for _ in range(k):
            req = DecodeRequest(
                request_id=uuid.uuid4().hex,
                reply_to=subjects.result(token),
                device_id="bench",
                model=cfg.model,
                model_fingerprint=model_fingerprint,
                mode="text",
                document_ref=doc_ref,
                context_tokens=0,
                question=case.question,
                max_new_tokens=case.max_new_tokens,
            )
            await bus.enqueue(subjects.decode, req.to_bytes(), msg_id=req.request_id)
        await asyncio.wait_for(done.wait(), 1800)
        seconds = max(t for t, _ in results) - t0
        return {
            "requests": k,
            "seconds": seconds,
            "requests_per_s": k / seconds,
            "by_decoder": dict(Counter(r.decoder_id for _, r in results)),
        }
    finally:
        await bus.close()


async def _cleanup(settings: Settings, redis_url: str) -> None:
    import redis.asyncio as redis_async

    client = redis_async.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{settings.namespace}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    with contextlib.suppress(ScoutError):
        bus = await NatsBus.connect(settings, name="bench-cleanup")
        await bus.delete_work_queue(WorkQueueSpec.for_decode(settings))
        await bus.close()
