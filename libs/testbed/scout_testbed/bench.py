"""The NATS + Redis half of ``scout bench pipeline``: a stack of role processes, timed asks, decoder throughput.

`run_services_bench` starts policy, quantizer, one decoder and the selector as OS processes (`scout_testbed.launcher`)
under a fresh namespace, times ``requests`` asks per case from this client (plus one discarded warm-up ask), then
measures decode throughput: ``throughput_requests`` decode requests enqueued at once straight onto the work queue
(the selector is not in that loop, so the decoders are what is measured), with one decoder and then with two.
Everything it created (processes, Redis keys, the JetStream stream) is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from scout_runtime.bus import Msg, NatsBus, WorkQueueSpec
from scout_runtime.errors import ScoutError
from scout_runtime.messages import AskRequest, DecodeRequest, DecodeResult, parse_reply
from scout_runtime.settings import Settings
from scout_runtime.store import RedisStore
from scout_services.client import ask
from scout_testbed.launcher import RoleProcess, role_env, spawn_role, wait_ready

__all__ = ["BenchCase", "run_services_bench"]


class BenchCase(BaseModel):
    """One kind of request the benchmark repeats."""

    label: str
    question: str
    document: str
    mode: str
    retention: float | None = None
    max_new_tokens: int = 8


def run_services_bench(
    *,
    model: str,
    dtype: str,
    model_fingerprint: str,
    nats_url: str,
    redis_url: str,
    cases: list[BenchCase],
    requests: int,
    throughput_case: BenchCase,
    throughput_requests: int,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Per-case ask measurements and per-decoder-count throughput (see the module docstring)."""
    return asyncio.run(
        _run(
            model=model,
            dtype=dtype,
            model_fingerprint=model_fingerprint,
            nats_url=nats_url,
            redis_url=redis_url,
            cases=cases,
            requests=requests,
            throughput_case=throughput_case,
            throughput_requests=throughput_requests,
            progress=progress,
        )
    )


async def _run(
    *,
    model: str,
    dtype: str,
    model_fingerprint: str,
    nats_url: str,
    redis_url: str,
    cases: list[BenchCase],
    requests: int,
    throughput_case: BenchCase,
    throughput_requests: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    namespace = "bench" + uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"scout-{namespace}-"))
    extra = {
        "SCOUT_SELECTOR_MODEL": model,
        "SCOUT_SELECTOR_DTYPE": dtype,
        "SCOUT_DECODER_MODEL": model,
        "SCOUT_DECODER_DTYPE": dtype,
        "SCOUT_POLICY_EDGE_MODEL": model,
        "SCOUT_REQUEST_TIMEOUT_S": "600",
        "SCOUT_ACK_WAIT_S": "30",
    }

    def spawn(role: str, name: str) -> RoleProcess:
        env = role_env(name=name, namespace=namespace, nats_url=nats_url, store_url=redis_url, extra=extra)
        return spawn_role(role, name, env, workdir)

    procs = [
        spawn("transport_policy", "policy"),
        spawn("quantizer", "quantizer"),
        spawn("cloud_decoder", "decoder-1"),
        spawn("selector", "selector"),
    ]
    settings = Settings(nats_url=SecretStr(nats_url), namespace=namespace, request_timeout_s=600)
    try:
        progress(f"starting {len(procs)} role processes (namespace {namespace})")
        await asyncio.to_thread(wait_ready, procs, 600.0)
        out: dict[str, Any] = {"namespace": namespace, "cases": {}, "throughput": {}}
        for case in cases:
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
                if i == 0:
                    continue  # warm-up
                rows.append(
                    {
                        "wall_s": wall,
                        "timings": reply.timings,
                        "bytes_sent": reply.bytes_sent,
                        "answer": reply.answer,
                        "mode": reply.mode,
                    }
                )
            out["cases"][case.label] = rows
            progress(f"services: {case.label}: {len(rows)} asks")
        for n in (1, 2):
            if n == 2:
                procs.append(spawn("cloud_decoder", "decoder-2"))
                await asyncio.to_thread(wait_ready, procs[-1:], 600.0)
            out["throughput"][str(n)] = await _throughput(
                settings, redis_url, throughput_case, throughput_requests, model, model_fingerprint
            )
            progress(f"services: {n} decoder(s): {out['throughput'][str(n)]['requests_per_s']:.3f} requests/s")
        return out
    finally:
        for proc in procs:
            if proc.alive:
                proc.popen.terminate()
        for proc in procs:
            proc.stop(timeout_s=60)
        await _cleanup(settings, redis_url)
        shutil.rmtree(workdir, ignore_errors=True)


async def _throughput(
    settings: Settings, redis_url: str, case: BenchCase, k: int, model: str, model_fingerprint: str
) -> dict[str, Any]:
    """Enqueue ``k`` text-mode decode requests at once; seconds until the last result, and who did what."""
    subjects = settings.subjects()
    store = RedisStore(redis_url, prefix=settings.key_prefix(), default_ttl_s=600)
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
                model=model,
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
