"""Hostile input to every entry point of the running services (HTTP ``/v1/ask``, ``ask``, ``plan``, ``encode`` and
the decode work queue) is answered with typed errors, and the services keep serving afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import aiohttp
import pytest
from stack import ServiceStack

from scout.eval.datasets import Example
from scout.pipeline import edge_prefill, encode_uplink, raw_kv_blob
from scout_runtime.bus import Msg, NatsBus
from scout_runtime.errors import ErrorCode, ScoutError
from scout_runtime.messages import (
    AskReply,
    DecodeRequest,
    EncodeReply,
    EncodeRequest,
    ErrorReply,
    PlanRequest,
    parse,
    parse_reply,
)
from scout_runtime.rpc import call
from scout_runtime.settings import Settings
from scout_runtime.store import RedisStore

pytestmark = pytest.mark.models

GOOD: dict[str, Any] = {
    "schema_version": 1,
    "type": "ask",
    "request_id": "h1",
    "device_id": "hostile",
    "document": "Paris is the capital of France.",
    "question": "What is the capital of France?",
    "deadline_ms": 60000,
    "max_new_tokens": 2,
    "mode": "local",
}


def body(**changes: Any) -> bytes:
    out = {**GOOD, "request_id": uuid.uuid4().hex, **changes}
    return json.dumps({k: v for k, v in out.items() if v is not ...}).encode()


HTTP_CASES = [
    ("not json", b"{this is not json", 400, ErrorCode.BAD_REQUEST),
    ("array", b"[1, 2, 3]", 400, ErrorCode.BAD_REQUEST),
    ("no version", body(schema_version=...), 400, ErrorCode.UNSUPPORTED_VERSION),
    ("future version", body(schema_version=2), 400, ErrorCode.UNSUPPORTED_VERSION),
    ("device id with a dot", body(device_id="a.b"), 400, ErrorCode.BAD_REQUEST),
    ("wildcard device id", body(device_id=">"), 400, ErrorCode.BAD_REQUEST),
    ("unknown mode", body(mode="quantum"), 400, ErrorCode.BAD_REQUEST),
    ("unknown field", body(admin=True), 400, ErrorCode.BAD_REQUEST),
    ("retention 0", body(retention=0), 400, ErrorCode.BAD_REQUEST),
    ("too many tokens", body(max_new_tokens=100_000), 400, ErrorCode.BAD_REQUEST),
    ("both document and ref", body(document_ref="a" * 64), 400, ErrorCode.BAD_REQUEST),
    ("oversized body", body(document="x" * (2 * 1024 * 1024)), 413, ErrorCode.TOO_LARGE),
    ("unknown selector", body(selector="nope"), 400, ErrorCode.BAD_REQUEST),
    ("missing document", body(document=..., document_ref="0" * 64), 404, ErrorCode.BLOB_MISSING),
    ("task without choices", body(task="multiple_choice"), 400, ErrorCode.BAD_REQUEST),
]


async def test_http_endpoint_answers_hostile_input_with_typed_errors(stack: ServiceStack) -> None:
    url = f"http://127.0.0.1:{stack.selector.ports['http']}/v1/ask"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for name, data, status, code in HTTP_CASES:
            async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
                raw = await resp.read()
                assert resp.status == status, (name, resp.status, raw[:300])
            error = parse(ErrorReply, raw)
            assert error.code == code, (name, error)
            assert "Traceback" not in error.message
        async with session.post(url, data=body()) as resp:  # still serving
            assert resp.status == 200
            assert parse(AskReply, await resp.read()).mode == "local"

        async def post(data: bytes) -> tuple[int, bytes]:
            async with session.post(url, data=data) as resp:
                return resp.status, await resp.read()

        twice = body()  # one request id in flight twice: the second is refused, the first answered
        first, second = await asyncio.gather(post(twice), post(twice))
        assert sorted((first[0], second[0])) == [200, 400]
        refused = first[1] if first[0] == 400 else second[1]
        assert parse(ErrorReply, refused).code == ErrorCode.BAD_REQUEST


async def _raw_error(client: NatsBus, subject: str, data: bytes) -> ErrorReply:
    msg = await client.request(subject, data, timeout_s=60)
    return parse(ErrorReply, msg.data)


async def test_subjects_answer_hostile_input_with_typed_errors(
    stack: ServiceStack, settings: Settings, client: NatsBus, ref_lm: Any, squad: list[Example]
) -> None:
    subjects = settings.subjects()
    for subject in (subjects.ask, subjects.plan, subjects.encode):
        for data, code in (
            (b"\x00\xff garbage", ErrorCode.BAD_REQUEST),
            (b'{"schema_version": 99}', ErrorCode.UNSUPPORTED_VERSION),
            (b'{"schema_version": 1, "type": "decode_result"}', ErrorCode.BAD_REQUEST),
            (b"{" * 100_000, ErrorCode.BAD_REQUEST),
        ):
            assert (await _raw_error(client, subject, data)).code == code, (subject, data[:40])
    plan = PlanRequest(request_id="p1", device_id="hostile", context_tokens=10, deadline_ms=1000).model_dump()
    too_long = {**plan, "context_tokens": 10**7}
    assert (await _raw_error(client, subjects.plan, json.dumps(too_long).encode())).code == ErrorCode.BAD_REQUEST

    # encode: a raw KV that is missing, corrupt, another model's, or a plan that does not exist
    ex = squad[0]
    edge = edge_prefill(ref_lm, question=ex.question, document=ex.context)
    raw = raw_kv_blob(edge, ref_lm.spec.fingerprint)
    store = RedisStore(stack.redis_url, prefix=settings.key_prefix(), default_ttl_s=300)
    try:
        good_ref = await store.put_blob("hostile", raw)
        junk_ref = await store.put_blob("hostile", b"\x08" + b"\x00" * 200)
    finally:
        await store.close()

    def encode(**changes: Any) -> EncodeRequest:
        fields: dict[str, Any] = {
            "request_id": uuid.uuid4().hex,
            "reply_to": subjects.result("hostile"),
            "device_id": "hostile",
            "model": "smollm2-135m",
            "model_fingerprint": ref_lm.spec.fingerprint,
            "mode": "int8",
            "bit_plan": "int8",
            "raw_blob_key": good_ref.key,
            "raw_blob_bytes": good_ref.size,
            "raw_blob_sha256": good_ref.sha256,
            "context_start": edge.context_start,
            "context_tokens": edge.context_tokens,
            "prompt_tokens": edge.prompt_tokens,
            "suffix_token_ids": edge.suffix_ids(),
            "question": ex.question,
        }
        return EncodeRequest(**{**fields, **changes})

    missing_sha = "f" * 64
    cases = [
        (
            encode(raw_blob_key=good_ref.key.replace(good_ref.sha256, missing_sha), raw_blob_sha256=missing_sha),
            ErrorCode.BLOB_MISSING,
        ),
        (
            encode(raw_blob_key=junk_ref.key, raw_blob_bytes=junk_ref.size, raw_blob_sha256=junk_ref.sha256),
            ErrorCode.BLOB_CORRUPT,
        ),
        (encode(model_fingerprint="0123456789abcdef"), ErrorCode.UNKNOWN_MODEL),
        (encode(bit_plan="int3"), ErrorCode.BAD_REQUEST),
        (encode(bit_plan="mixed:99=16"), ErrorCode.BAD_REQUEST),
        (encode(positions=DecodeRequest.encode_positions(b"\x07\xff\xff")), ErrorCode.BAD_REQUEST),
    ]
    for req, code in cases:
        with pytest.raises(ScoutError) as info:
            await call(client, subjects.encode, req, EncodeReply, timeout_s=60)
        assert info.value.code == code, (req.bit_plan, info.value)


async def test_decode_queue_answers_hostile_work_with_typed_errors(
    stack: ServiceStack, settings: Settings, client: NatsBus, ref_lm: Any, squad: list[Example]
) -> None:
    stack.ensure_decoders()
    subjects = settings.subjects()
    token = f"hostile-{uuid.uuid4().hex[:8]}"
    replies: dict[str, ErrorReply | Any] = {}
    errors: list[ErrorReply] = []
    published_on_ask: list[bytes] = []

    async def on_reply(msg: Msg) -> None:
        try:
            parse_reply(AskReply, msg.data)
        except ScoutError as e:
            replies[e.request_id or ""] = e

    async def on_error(msg: Msg) -> None:
        with contextlib.suppress(ScoutError):
            errors.append(parse(ErrorReply, msg.data))

    async def on_ask(msg: Msg) -> None:
        published_on_ask.append(msg.data)

    await client.subscribe(subjects.result(token), on_reply, concurrency=4)
    await client.subscribe(subjects.errors, on_error)
    await client.subscribe(subjects.ask, on_ask, queue=None)

    ex = squad[0]
    edge = edge_prefill(ref_lm, question=ex.question, document=ex.context)
    blob = encode_uplink(
        raw_kv_blob(edge, ref_lm.spec.fingerprint),
        model_fingerprint=ref_lm.spec.fingerprint,
        bit_plan="int8",
        positions=None,
        context_start=edge.context_start,
        context_tokens=edge.context_tokens,
    ).data
    store = RedisStore(stack.redis_url, prefix=settings.key_prefix(), default_ttl_s=300)
    try:
        good = await store.put_blob("hostile", blob)
        junk = await store.put_blob("hostile", b"not a scout-kv blob at all")
        doc_ref = await store.put_document(ex.context)
    finally:
        await store.close()

    def decode(**changes: Any) -> DecodeRequest:
        fields: dict[str, Any] = {
            "request_id": uuid.uuid4().hex,
            "reply_to": subjects.result(token),
            "device_id": "hostile",
            "model": "smollm2-135m",
            "model_fingerprint": ref_lm.spec.fingerprint,
            "mode": "int8",
            "blob_key": good.key,
            "blob_bytes": good.size,
            "blob_sha256": good.sha256,
            "context_tokens": edge.context_tokens,
            "suffix_token_ids": edge.suffix_ids(),
            "question": ex.question,
            "max_new_tokens": 2,
        }
        return DecodeRequest(**{**fields, **changes})

    missing = "e" * 64
    scout = {"mode": "scout", "blob_key": None, "blob_bytes": None, "blob_sha256": None, "document_ref": doc_ref}
    answered = [
        (decode(blob_key=good.key.replace(good.sha256, missing), blob_sha256=missing), ErrorCode.BLOB_MISSING),
        (decode(blob_key=junk.key, blob_bytes=junk.size, blob_sha256=junk.sha256), ErrorCode.BLOB_CORRUPT),
        (decode(blob_bytes=good.size + 1), ErrorCode.BLOB_CORRUPT),
        (decode(model_fingerprint="0123456789abcdef"), ErrorCode.UNKNOWN_MODEL),
        (decode(suffix_token_ids=[10**9]), ErrorCode.BAD_REQUEST),
        (decode(**scout, positions=DecodeRequest.encode_positions(b"\x01"), context_tokens=3), ErrorCode.BAD_REQUEST),
        (
            decode(
                **scout,
                model="qwen2.5-coder-0.5b",
                model_fingerprint="0123456789abcdef",
                positions=DecodeRequest.encode_positions(b"\x01"),
            ),
            ErrorCode.UNKNOWN_MODEL,
        ),
        (decode(**{**scout, "mode": "text", "document_ref": missing}), ErrorCode.BLOB_MISSING),
    ]
    for req, _ in answered:
        await client.enqueue(subjects.decode, req.to_bytes(), msg_id=req.request_id)
    await client.enqueue(subjects.decode, b"\x00 not a decode request", msg_id=uuid.uuid4().hex)
    reflect = decode(reply_to=subjects.ask)
    await client.enqueue(subjects.decode, reflect.to_bytes(), msg_id=reflect.request_id)

    deadline = asyncio.get_running_loop().time() + 120
    while len(replies) < len(answered) or len(errors) < 2:
        assert asyncio.get_running_loop().time() < deadline, (replies, errors)
        await asyncio.sleep(0.1)
    for req, code in answered:
        assert replies[req.request_id].code == code, (req.mode, replies[req.request_id])
    assert {e.code for e in errors} == {ErrorCode.BAD_REQUEST}
    assert any(e.request_id == reflect.request_id for e in errors)
    assert published_on_ask == [], "a decoder was made to publish on the ask subject"
    assert all(p.alive for p in stack.procs.values())
