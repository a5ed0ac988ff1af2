"""Hostile inputs for every entry point of a deployment (the corpora that `scout_testbed.hostile` runs).

Categories of cases: ``random_bytes`` (seeded), ``schema_version`` (missing, unknown, wrong JSON type),
``wrong_type`` (each field of a valid message replaced by an object), ``oversized`` (documents, questions, token
counts, bodies beyond the limits), ``bad_field`` (values out of range or malformed), ``positions`` (position sets
that do not decode against the context, out of range), ``blob`` (missing, junk, truncated, bit-flipped, overwritten
behind the store, wrong size), ``unknown_model``, ``reflection`` and ``duplicate``.

The blob and position cases need a real raw KV and uplink blob of the deployment's model (`stage_fixtures`
computes them with `scout.pipeline` and stages them, and their broken variants, in the cloud store).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from scout_runtime.errors import ErrorCode
from scout_runtime.messages import DecodeRequest, DecodeResult, EncodeRequest, ErrorReply, LinkState, PlanRequest
from scout_runtime.store import BlobRef, RedisStore

__all__ = [
    "DEVICE",
    "ENTRY_POINTS",
    "GOOD_ASK",
    "Fixtures",
    "HostileCase",
    "ask_body",
    "ask_cases",
    "bad_position_sets",
    "decode_cases",
    "encode_cases",
    "good_decode",
    "good_encode",
    "good_plan",
    "http_cases",
    "link_cases",
    "plan_cases",
    "result_cases",
    "stage_fixtures",
    "subject_cases",
]

ENTRY_POINTS = ("http", "ask", "plan", "encode", "decode", "link", "result")
DEVICE = "hostile"

GOOD_ASK: dict[str, Any] = {
    "schema_version": 1,
    "type": "ask",
    "request_id": "h1",
    "device_id": DEVICE,
    "document": "Paris is the capital of France.",
    "question": "What is the capital of France?",
    "deadline_ms": 60000,
    "max_new_tokens": 2,
    "mode": "local",
}
"""A valid ask the edge answers itself (two tokens): the base every ask case changes one thing of."""


@dataclass(frozen=True)
class HostileCase:
    """One hostile input to one entry point, and how it must end."""

    entry: str
    name: str
    category: str
    data: bytes
    expect: ErrorCode | None
    """The code of the typed error it must get (None: publish-only entry points, where nobody replies)."""
    http_status: int | None = None
    request_id: str | None = None
    """Where the answer is correlated (decode cases answered on their reply subject)."""
    readable: bool = True
    """Decode cases: whether the decoder can read it and answer on its reply subject (else: the errors subject)."""


def ask_body(**changes: Any) -> bytes:
    """`GOOD_ASK` with a fresh request id and ``changes`` (a value of ``...`` removes the field)."""
    out = {**GOOD_ASK, "request_id": uuid.uuid4().hex, **changes}
    return json.dumps({k: v for k, v in out.items() if v is not ...}).encode()


def _random_bytes(rng: random.Random, n: int, max_len: int = 4096) -> list[bytes]:
    sizes = [0, 1, 2, 7, 64, 512, max_len]
    return [rng.randbytes(sizes[i] if i < len(sizes) else rng.randrange(1, max_len)) for i in range(n)]


def _generic(entry: str, good: dict[str, Any], rng: random.Random, random_n: int) -> list[HostileCase]:
    """Random bytes, schema versions and a wrong JSON type in every field of ``good``."""
    bad, unsupported = ErrorCode.BAD_REQUEST, ErrorCode.UNSUPPORTED_VERSION
    cases = [HostileCase(entry, f"random {len(b)} B", "random_bytes", b, bad) for b in _random_bytes(rng, random_n)]
    cases += [
        HostileCase(entry, "not json", "random_bytes", b"{this is not json", bad),
        HostileCase(entry, "json array", "random_bytes", b"[1, 2, 3]", bad),
        HostileCase(entry, "json string", "random_bytes", b'"ask"', bad),
        HostileCase(entry, "deep nesting", "random_bytes", b"[" * 50_000 + b"]" * 50_000, bad),
        HostileCase(entry, "100k open braces", "random_bytes", b"{" * 100_000, bad),
        HostileCase(entry, "NaN literal", "random_bytes", b'{"schema_version": 1, "x": NaN}', bad),
        HostileCase(entry, "another message type", "bad_field", b'{"schema_version": 1, "type": "decode_result"}', bad),
    ]
    for label, version in (
        ("missing", ...),
        ("0", 0),
        ("2", 2),
        ("99", 99),
        ('"1"', "1"),
        ("1.0", 1.0),
        ("true", True),
        ("null", None),
        ("-1", -1),
    ):
        body = {k: v for k, v in {**good, "schema_version": version}.items() if v is not ...}
        cases.append(
            HostileCase(entry, f"schema_version {label}", "schema_version", json.dumps(body).encode(), unsupported)
        )
    cases.append(HostileCase(entry, "only a future version", "schema_version", b'{"schema_version": 99}', unsupported))
    for key in good:
        if key == "schema_version":
            continue
        body = {**good, key: {"$": [1]}}
        cases.append(HostileCase(entry, f"{key}: an object", "wrong_type", json.dumps(body).encode(), bad))
    return cases


# --- HTTP and ask --------------------------------------------------------------------------------------------
def _ask_semantic(entry: str) -> list[HostileCase]:
    """Ask-specific cases (one field of a valid ask changed), with the HTTP status each maps to."""
    bad, big = ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE
    rows: list[tuple[str, str, bytes, int, ErrorCode]] = [
        ("device id with a dot", "bad_field", ask_body(device_id="a.b"), 400, bad),
        ("wildcard device id", "bad_field", ask_body(device_id=">"), 400, bad),
        ("device id of 65 chars", "bad_field", ask_body(device_id="d" * 65), 400, bad),
        ("request id with a space", "bad_field", ask_body(request_id="a b"), 400, bad),
        ("unknown mode", "bad_field", ask_body(mode="quantum"), 400, bad),
        ("unknown field", "bad_field", ask_body(admin=True), 400, bad),
        ("retention 0", "bad_field", ask_body(retention=0), 400, bad),
        ("retention 1.5", "bad_field", ask_body(retention=1.5), 400, bad),
        ("deadline 0", "bad_field", ask_body(deadline_ms=0), 400, bad),
        ("deadline of a year", "bad_field", ask_body(deadline_ms=31_536_000_000), 400, bad),
        ("empty question", "bad_field", ask_body(question=""), 400, bad),
        ("both document and ref", "bad_field", ask_body(document_ref="a" * 64), 400, bad),
        ("neither document nor ref", "bad_field", ask_body(document=...), 400, bad),
        ("ref not a sha256", "bad_field", ask_body(document=..., document_ref="xyz"), 400, bad),
        ("unknown task", "bad_field", ask_body(task="poetry"), 400, bad),
        ("task without choices", "bad_field", ask_body(task="multiple_choice"), 400, bad),
        ("unknown selector", "unknown_model", ask_body(selector="nope"), 400, bad),
        ("missing document", "blob", ask_body(document=..., document_ref="0" * 64), 404, ErrorCode.BLOB_MISSING),
        ("too many tokens", "oversized", ask_body(max_new_tokens=100_000), 400, bad),
        ("question of 5000 chars", "oversized", ask_body(question="why? " * 1000), 400, bad),
        ("document of 600 KB", "oversized", ask_body(document="x" * 600_000), 400, bad),
    ]
    if entry == "http":
        rows.append(("oversized body", "oversized", ask_body(document="x" * (2 * 1024 * 1024)), 413, big))
    return [HostileCase(entry, name, cat, data, code, http_status=status) for name, cat, data, status, code in rows]


def http_cases(seed: int = 0, random_n: int = 16) -> list[HostileCase]:
    """Every HTTP case: the generic corpus on a valid ask (status 400) plus the ask-specific ones."""
    generic = [
        HostileCase(c.entry, c.name, c.category, c.data, c.expect, http_status=400)
        for c in _generic("http", GOOD_ASK, random.Random(seed), random_n)
    ]
    return generic + _ask_semantic("http")


def subject_cases(entry: str, good: dict[str, Any], seed: int = 0, random_n: int = 16) -> list[HostileCase]:
    """The generic corpus for a request/reply subject whose valid request is ``good``."""
    return _generic(entry, good, random.Random(seed), random_n)


def ask_cases(seed: int = 0, random_n: int = 16) -> list[HostileCase]:
    return subject_cases("ask", GOOD_ASK, seed, random_n) + _ask_semantic("ask")


def good_plan() -> dict[str, Any]:
    return PlanRequest(request_id="p1", device_id=DEVICE, context_tokens=10, deadline_ms=1000).model_dump(mode="json")


def plan_cases(seed: int = 0, random_n: int = 16) -> list[HostileCase]:
    bad = ErrorCode.BAD_REQUEST
    good = good_plan()
    specific = [
        ("context of 10^7 tokens", "oversized", {"context_tokens": 10**7}),
        ("negative context", "bad_field", {"context_tokens": -1}),
        ("deadline 0", "bad_field", {"deadline_ms": 0}),
        ("negative elapsed", "bad_field", {"elapsed_ms": -5.0}),
        ("unknown mode", "bad_field", {"mode": "quantum"}),
        ("retention 2", "bad_field", {"retention": 2.0}),
        ("model pair with spaces", "unknown_model", {"model_pair": "a b"}),
        ("device id with a dot", "bad_field", {"device_id": "a.b"}),
    ]
    return subject_cases("plan", good, seed, random_n) + [
        HostileCase("plan", name, cat, json.dumps({**good, **change}).encode(), bad) for name, cat, change in specific
    ]


def link_cases(seed: int = 0, random_n: int = 8) -> list[tuple[HostileCase, str]]:
    """(case, device whose link subject it is published on): all must be rejected by the policy."""
    rng = random.Random(seed)
    good = LinkState(device_id=DEVICE, rate_bps=1e6, source="shaper", at=1.0).model_dump(mode="json")
    cases = _generic("link", good, rng, random_n)
    for name, change in (
        ("negative rate", {"rate_bps": -1.0}),
        ("rate 1e20", {"rate_bps": 1e20}),
        ("unknown source", {"source": "oracle"}),
        ("negative time", {"at": -1.0}),
        ("extra field", {"admin": True}),
    ):
        cases.append(HostileCase("link", name, "bad_field", json.dumps({**good, **change}).encode(), None))
    out = [(HostileCase(c.entry, c.name, c.category, c.data, None), DEVICE) for c in cases]
    other = json.dumps({**good, "device_id": "someone-else"}).encode()
    out.append((HostileCase("link", "another device's state on this subject", "bad_field", other, None), DEVICE))
    return out


def result_cases(model: str, seed: int = 0, random_n: int = 16) -> list[HostileCase]:
    """Garbage and stray results for a selector's result subject (publish only: nobody replies; the selector must
    ignore them while an ask in flight there still gets its own answer)."""
    stray = DecodeResult(
        request_id=uuid.uuid4().hex,
        device_id=DEVICE,
        answer="forged",
        mode="text",
        model=model,
        generated_tokens=1,
        decoder_id="nobody",
    )
    cases = [
        HostileCase("result", c.name, c.category, c.data, None)
        for c in _generic("result", stray.model_dump(mode="json"), random.Random(seed), random_n)
        if c.category != "wrong_type"
    ]
    cases.append(HostileCase("result", "a result nobody waits for", "bad_field", stray.to_bytes(), None))
    err = ErrorReply(code=ErrorCode.INTERNAL, message="stray", request_id=uuid.uuid4().hex)
    cases.append(HostileCase("result", "an error nobody waits for", "bad_field", err.to_bytes(), None))
    return cases


# --- fixtures: real blobs of the deployment's model, and their broken variants --------------------------------
@dataclass
class Fixtures:
    """What the encode and decode cases refer to, staged in the cloud store under `DEVICE`."""

    model: str
    fingerprint: str
    question: str
    context_start: int
    context_tokens: int
    prompt_tokens: int
    suffix_ids: list[int]
    raw: BlobRef
    uplink: BlobRef
    document_ref: str
    broken_raw: dict[str, BlobRef] = field(default_factory=dict)
    broken_uplink: dict[str, BlobRef] = field(default_factory=dict)


async def _broken_variants(store: RedisStore, good: bytes) -> dict[str, BlobRef]:
    """Junk, truncated, bit-flipped (each a well-formed store entry), and the good one overwritten behind the
    store's back (content no longer matching its metadata)."""
    flipped = bytearray(good)
    for i in range(len(flipped) // 3, len(flipped), max(1, len(flipped) // 7)):
        flipped[i] ^= 0xFF
    out = {
        "junk": await store.put_blob(DEVICE, b"not a scout-kv blob at all " * 8),
        "truncated": await store.put_blob(DEVICE, good[: len(good) // 2]),
        "bit-flipped": await store.put_blob(DEVICE, bytes(flipped)),
        "empty": await store.put_blob(DEVICE, b""),
    }
    tampered = await store.put_blob(DEVICE, good + b"\x00")  # a copy with its own key, then overwritten in place
    await store.client.set(tampered.key, bytes(flipped) + b"\x00", keepttl=True)
    out["overwritten behind the store"] = tampered
    return out


async def stage_fixtures(store: RedisStore, lm: Any, model: str, question: str, document: str) -> Fixtures:
    """Prefill ``lm`` on the prompt, stage its raw KV, an int8 uplink blob, the document and the broken variants."""
    from scout.pipeline import edge_prefill, encode_uplink, raw_kv_blob

    edge = await asyncio.to_thread(edge_prefill, lm, question=question, document=document)
    fp = lm.spec.fingerprint
    raw = await asyncio.to_thread(raw_kv_blob, edge, fp)
    up = await asyncio.to_thread(
        encode_uplink,
        raw,
        model_fingerprint=fp,
        bit_plan="int8",
        positions=None,
        context_start=edge.context_start,
        context_tokens=edge.context_tokens,
    )
    raw_ref = await store.put_blob(DEVICE, raw)
    up_ref = await store.put_blob(DEVICE, up.data)
    return Fixtures(
        model=model,
        fingerprint=fp,
        question=question,
        context_start=edge.context_start,
        context_tokens=edge.context_tokens,
        prompt_tokens=edge.prompt_tokens,
        suffix_ids=list(edge.suffix_ids()),
        raw=raw_ref,
        uplink=up_ref,
        document_ref=await store.put_document(document),
        broken_raw=await _broken_variants(store, raw),
        broken_uplink=await _broken_variants(store, up.data),
    )


def _positions(data: bytes) -> str:
    return DecodeRequest.encode_positions(data)


def bad_position_sets(n: int, seed: int = 0, count: int = 6) -> list[tuple[str, bytes]]:
    """Encoded position sets that must not decode against a context of ``n`` tokens: out of range, malformed, and
    seeded random bytes (those that happen to decode are skipped, so every case is invalid)."""
    from scout.positions import decode_positions, encode_positions

    rng = random.Random(seed)
    candidates = [
        ("index past the context", encode_positions([0, 1, n + 4], n + 5)),
        ("encoded for a longer context", encode_positions(list(range(0, n + 40, 2)), n + 40)),
        ("truncated", encode_positions(list(range(0, n, 3)), n)[:-1] or b"\x07"),
        ("unknown tag", b"\x7f\x01\x02"),
        ("varint overflow", b"\x07\xff\xff"),
        ("empty payload", b""),
    ]
    sets: list[tuple[str, bytes]] = []
    for label, data in candidates:
        try:
            decode_positions(data, n)
        except ValueError:
            sets.append((label, data))
    tries = 0
    while len(sets) < len(candidates) + count and tries < 1000:
        tries += 1
        data = rng.randbytes(rng.randrange(1, 64))
        try:
            decode_positions(data, n)
        except ValueError:
            sets.append((f"random {len(data)} B", data))
    return sets


def _good_fields(fx: Fixtures, reply_to: str) -> dict[str, Any]:
    """What a valid encode request and a valid decode request of the fixtures' int8 prompt both carry."""
    return {
        "request_id": uuid.uuid4().hex,
        "reply_to": reply_to,
        "device_id": DEVICE,
        "model": fx.model,
        "model_fingerprint": fx.fingerprint,
        "mode": "int8",
        "context_tokens": fx.context_tokens,
        "suffix_token_ids": fx.suffix_ids,
        "question": fx.question,
        "max_new_tokens": 2,
    }


def _ref_fields(prefix: str, ref: BlobRef) -> dict[str, Any]:
    return {f"{prefix}_key": ref.key, f"{prefix}_bytes": ref.size, f"{prefix}_sha256": ref.sha256}


def _missing_fields(prefix: str, ref: BlobRef, missing_sha256: str) -> dict[str, Any]:
    """The key and checksum of a blob that was never stored: ``ref``'s key with another content hash in it."""
    return {f"{prefix}_key": ref.key.replace(ref.sha256, missing_sha256), f"{prefix}_sha256": missing_sha256}


def good_encode(fx: Fixtures, reply_to: str, **changes: Any) -> EncodeRequest:
    fields: dict[str, Any] = {
        **_good_fields(fx, reply_to),
        "bit_plan": "int8",
        **_ref_fields("raw_blob", fx.raw),
        "context_start": fx.context_start,
        "prompt_tokens": fx.prompt_tokens,
    }
    return EncodeRequest(**{**fields, **changes})


def encode_cases(fx: Fixtures, reply_to: str, seed: int = 0, random_n: int = 16) -> list[HostileCase]:
    bad, corrupt = ErrorCode.BAD_REQUEST, ErrorCode.BLOB_CORRUPT
    good = good_encode(fx, reply_to)
    cases = subject_cases("encode", good.model_dump(mode="json"), seed, random_n)
    missing = "f" * 64

    def case(name: str, category: str, code: ErrorCode, **changes: Any) -> HostileCase:
        return HostileCase("encode", name, category, good_encode(fx, reply_to, **changes).to_bytes(), code)

    cases.append(
        case("missing raw blob", "blob", ErrorCode.BLOB_MISSING, **_missing_fields("raw_blob", fx.raw, missing))
    )
    for label, ref in fx.broken_raw.items():
        cases.append(case(f"{label} raw blob", "blob", corrupt, **_ref_fields("raw_blob", ref)))
    cases += [
        case("raw blob size off by one", "blob", corrupt, raw_blob_bytes=fx.raw.size + 1),
        case(
            "unknown model fingerprint", "unknown_model", ErrorCode.UNKNOWN_MODEL, model_fingerprint="0123456789abcdef"
        ),
        case("bit plan int3", "bad_field", bad, bit_plan="int3"),
        case("bit plan for layer 99", "bad_field", bad, bit_plan="mixed:99=16"),
        case("bit plan garbage", "bad_field", bad, bit_plan="mixed:=,="),
    ]
    for label, data in bad_position_sets(fx.context_tokens, seed):
        cases.append(case(f"positions: {label}", "positions", bad, positions=_positions(data), retention=0.5))
    # Shapes the model validators refuse (sent as raw JSON: the model would not even construct them).
    raw_json = good.model_dump(mode="json")
    for name, category, change in (
        ("raw key of another device", "bad_field", {"raw_blob_key": fx.raw.key.replace(f":{DEVICE}:", ":other:")}),
        ("context past the prompt", "bad_field", {"context_tokens": fx.prompt_tokens + 5}),
        ("positions not base64", "positions", {"positions": "***"}),
        ("positions of 100 KB", "oversized", {"positions": base64.b64encode(b"\x00" * 100_000).decode()}),
        ("suffix of 5000 tokens", "oversized", {"suffix_token_ids": [1] * 5000}),
        ("reply_to a wildcard", "reflection", {"reply_to": "scout.v1.>"}),
    ):
        cases.append(HostileCase("encode", name, category, json.dumps({**raw_json, **change}).encode(), bad))
    return cases


def good_decode(fx: Fixtures, reply_to: str, **changes: Any) -> DecodeRequest:
    fields: dict[str, Any] = {**_good_fields(fx, reply_to), **_ref_fields("blob", fx.uplink)}
    return DecodeRequest(**{**fields, **changes})


def decode_cases(fx: Fixtures, reply_to: str, ask_subject: str, seed: int = 0, random_n: int = 16) -> list[HostileCase]:
    """Readable cases are answered on ``reply_to`` (correlated by request id); unreadable ones and the reflection
    attempt (``reply_to`` = the ask subject) on the errors subject."""
    bad, corrupt = ErrorCode.BAD_REQUEST, ErrorCode.BLOB_CORRUPT
    good = good_decode(fx, reply_to)
    unreadable = [
        HostileCase(c.entry, c.name, c.category, c.data, c.expect, readable=False)
        for c in _generic("decode", good.model_dump(mode="json"), random.Random(seed), random_n)
    ]
    missing = "e" * 64
    scout: dict[str, Any] = {
        "mode": "scout",
        "retention": 0.5,
        "blob_key": None,
        "blob_bytes": None,
        "blob_sha256": None,
        "document_ref": fx.document_ref,
    }

    def case(name: str, category: str, code: ErrorCode, **changes: Any) -> HostileCase:
        req = good_decode(fx, reply_to, **changes)
        return HostileCase("decode", name, category, req.to_bytes(), code, request_id=req.request_id)

    cases = [
        case("missing blob", "blob", ErrorCode.BLOB_MISSING, **_missing_fields("blob", fx.uplink, missing)),
        *[
            case(f"{label} blob", "blob", corrupt, **_ref_fields("blob", ref))
            for label, ref in fx.broken_uplink.items()
        ],
        case("blob size off by one", "blob", corrupt, blob_bytes=fx.uplink.size + 1),
        case(
            "unknown model fingerprint", "unknown_model", ErrorCode.UNKNOWN_MODEL, model_fingerprint="0123456789abcdef"
        ),
        case("token id 10^9 in the suffix", "bad_field", bad, suffix_token_ids=[10**9]),
        case("scout: 3-token context", "positions", bad, **scout, positions=_positions(b"\x01"), context_tokens=3),
        case(
            "scout: another model's positions",
            "unknown_model",
            ErrorCode.UNKNOWN_MODEL,
            **{**scout, "model": "qwen2.5-coder-0.5b", "model_fingerprint": "0123456789abcdef"},
            positions=_positions(b"\x01"),
        ),
        case(
            "text: missing document",
            "blob",
            ErrorCode.BLOB_MISSING,
            **{**scout, "mode": "text", "document_ref": missing},
        ),
        case(
            "scout: missing document",
            "blob",
            ErrorCode.BLOB_MISSING,
            **{**scout, "document_ref": missing},
            positions=_positions(b"\x01"),
        ),
    ]
    for label, data in bad_position_sets(fx.context_tokens, seed):
        cases.append(case(f"scout positions: {label}", "positions", bad, **scout, positions=_positions(data)))
    reflect = good_decode(fx, ask_subject)
    cases.append(
        HostileCase(
            "decode",
            "reply_to the ask subject",
            "reflection",
            reflect.to_bytes(),
            bad,
            request_id=reflect.request_id,
            readable=False,
        )
    )
    raw_json = good.model_dump(mode="json")
    for name, category, change in (
        ("positions not base64", "positions", {**scout, "positions": "***"}),
        ("positions of 100 KB", "oversized", {**scout, "positions": base64.b64encode(b"\x00" * 100_000).decode()}),
        ("question of 5000 chars", "oversized", {"question": "why? " * 1000}),
        ("suffix of 5000 tokens", "oversized", {"suffix_token_ids": [1] * 5000}),
        ("reply_to with a space", "reflection", {"reply_to": "a b"}),
        ("local mode at the cloud", "bad_field", {"mode": "local"}),
    ):
        body = json.dumps({**raw_json, **change}).encode()
        unreadable.append(HostileCase("decode", name, category, body, bad, readable=False))
    return cases + unreadable
