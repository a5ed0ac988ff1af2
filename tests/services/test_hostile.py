"""Hostile input to every entry point of the running services (HTTP ``/v1/ask``, ``ask``, ``plan``, ``encode`` and
the decode work queue) is answered with typed errors, and the services keep serving afterwards.

The corpora live in `scout_testbed.hostile_cases` (``scout bench reliability`` counts the same cases in its
report); these tests run them against the service stack of this suite and check every case's code (and HTTP
status)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from stack import ServiceStack

from scout.datasets import Example
from scout_runtime.bus import NatsBus
from scout_runtime.errors import ErrorCode
from scout_runtime.messages import AskReply, ErrorReply, parse
from scout_runtime.settings import Settings
from scout_runtime.store import RedisStore
from scout_testbed.hostile import Target, run_decode, run_request_reply
from scout_testbed.hostile_cases import (
    Fixtures,
    ask_body,
    ask_cases,
    decode_cases,
    encode_cases,
    http_cases,
    plan_cases,
    stage_fixtures,
)

pytestmark = pytest.mark.models


def _target(stack: ServiceStack, settings: Settings) -> Target:
    return Target(
        settings=settings,
        http_url=f"http://127.0.0.1:{stack.selector.ports['http']}",
        open_store=lambda: RedisStore(stack.redis_url, prefix=settings.key_prefix(), default_ttl_s=300),
        policy_metrics_url=f"http://127.0.0.1:{stack.procs['policy'].ports['metrics']}/metrics",
        selector_instance=stack.selector.instance,
        alive=lambda: all(p.alive for p in stack.procs.values()),
    )


async def _fixtures(target: Target, ref_lm: Any, ex: Example) -> Fixtures:
    """The staged blobs and documents the encode and decode cases point at (in the stack's Redis)."""
    store = target.open_store()
    try:
        return await stage_fixtures(store, ref_lm, "smollm2-135m", ex.question, ex.context)
    finally:
        await store.close()


async def test_http_endpoint_answers_hostile_input_with_typed_errors(stack: ServiceStack) -> None:
    url = f"http://127.0.0.1:{stack.selector.ports['http']}/v1/ask"
    cases = http_cases(seed=0, random_n=8)
    assert {c.category for c in cases} >= {"random_bytes", "schema_version", "wrong_type", "oversized", "blob"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for case in cases:
            async with session.post(url, data=case.data, headers={"Content-Type": "application/json"}) as resp:
                raw = await resp.read()
                assert resp.status == case.http_status, (case.name, resp.status, raw[:300])
            error = parse(ErrorReply, raw)
            assert error.code == case.expect, (case.name, error)
            assert "Traceback" not in error.message
        async with session.post(url, data=ask_body()) as resp:  # still serving
            assert resp.status == 200
            assert parse(AskReply, await resp.read()).mode == "local"

        async def post(data: bytes) -> tuple[int, bytes]:
            async with session.post(url, data=data) as resp:
                return resp.status, await resp.read()

        twice = ask_body()  # one request id in flight twice: the second is refused, the first answered
        first, second = await asyncio.gather(post(twice), post(twice))
        assert sorted((first[0], second[0])) == [200, 400]
        refused = first[1] if first[0] == 400 else second[1]
        assert parse(ErrorReply, refused).code == ErrorCode.BAD_REQUEST


async def test_subjects_answer_hostile_input_with_typed_errors(
    stack: ServiceStack, settings: Settings, client: NatsBus, ref_lm: Any, squad: list[Example]
) -> None:
    target = _target(stack, settings)
    fx = await _fixtures(target, ref_lm, squad[0])
    reply_to = settings.subjects().result("hostile")
    corpora = {
        "ask": ask_cases(seed=1, random_n=8),
        "plan": plan_cases(seed=2, random_n=8),
        "encode": encode_cases(fx, reply_to, seed=3, random_n=8),
    }
    encode_codes = {c.expect for c in corpora["encode"]}
    assert {ErrorCode.BLOB_MISSING, ErrorCode.BLOB_CORRUPT, ErrorCode.UNKNOWN_MODEL} <= encode_codes
    assert any(c.category == "positions" for c in corpora["encode"])
    for entry, cases in corpora.items():
        report = await run_request_reply(target, client, entry, cases, fx)
        assert report.tried == len(cases) and report.typed == len(cases), (entry, report.failures)
        assert report.unhandled == 0, (entry, report.failures)
        assert report.still_serving, entry


async def test_decode_queue_answers_hostile_work_with_typed_errors(
    stack: ServiceStack, settings: Settings, client: NatsBus, ref_lm: Any, squad: list[Example]
) -> None:
    stack.ensure_decoders()
    target = _target(stack, settings)
    subjects = settings.subjects()
    fx = await _fixtures(target, ref_lm, squad[0])
    token = "hostile-decode"
    cases = decode_cases(fx, subjects.result(token), subjects.ask, seed=4, random_n=8)
    readable = [c for c in cases if c.readable]
    assert {c.expect for c in readable} >= {ErrorCode.BLOB_MISSING, ErrorCode.BLOB_CORRUPT, ErrorCode.UNKNOWN_MODEL}
    assert any(c.category == "reflection" and not c.readable for c in cases)
    report = await run_decode(target, client, cases, fx, token)
    # run_decode also fails a report whose decoders were made to publish on the ask subject (reflection).
    assert report.unhandled == 0 and not report.failures, report.failures
    assert report.typed == report.tried == len(cases)
    assert report.still_serving
    assert all(p.alive for p in stack.procs.values())
