"""Message models and `parse`: versioned, bounded, and nothing but typed errors for any input."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scout.policy.operating_points import KNOWN_MODES
from scout.positions import encode_positions
from scout_runtime.errors import (
    BadRequest,
    BlobMissing,
    ErrorCode,
    ScoutError,
    TooLarge,
    UnsupportedVersion,
    error_for_code,
)
from scout_runtime.limits import DEFAULT_LIMITS, Limits
from scout_runtime.messages import (
    AskReply,
    AskRequest,
    DecodeRequest,
    DecodeResult,
    ErrorReply,
    Health,
    LinkState,
    Message,
    Mode,
    Plan,
    PlanRequest,
    parse,
    parse_reply,
)

SHA = hashlib.sha256(b"doc").hexdigest()
BLOB_SHA = hashlib.sha256(b"blob").hexdigest()


def samples() -> list[Message]:
    """One valid instance of every message model."""
    plan = Plan(request_id="r1", mode="int8", retention=0.5, bit_plan="int8", expected_bytes=1234, reason="fits")
    return [
        AskRequest(
            request_id="r1", device_id="car-7", document="Paris is in France.", question="Where?", deadline_ms=2000
        ),
        AskRequest(request_id="r2", device_id="car-7", document_ref=SHA, question="Q", deadline_ms=10, mode="scout"),
        PlanRequest(request_id="r1", device_id="car-7", context_tokens=1024, deadline_ms=2000, elapsed_ms=12.5),
        plan,
        AskReply(
            request_id="r1",
            device_id="car-7",
            answer="Paris",
            mode="int8",
            bytes_sent=1234,
            timings={"prefill": 0.1, "transfer": 0.2},
            plan=plan,
        ),
        DecodeRequest(
            request_id="r1",
            reply_to="_INBOX.abc",
            device_id="car-7",
            model="qwen2.5-1.5b",
            model_fingerprint="0123456789abcdef",
            mode="int8",
            blob_key=f"scout:blob:car-7:{BLOB_SHA}",
            blob_bytes=4,
            blob_sha256=BLOB_SHA,
            context_tokens=100,
            suffix_token_ids=[1, 2, 3],
            question="Q",
            trace_context={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
        ),
        DecodeRequest(
            request_id="r3",
            reply_to="scout.v1.result.sel-1",
            device_id="car-7",
            model="m",
            model_fingerprint="0123456789abcdef",
            mode="scout",
            context_tokens=100,
            document_ref=SHA,
            positions=DecodeRequest.encode_positions(encode_positions([1, 5, 9], 100)),
            question="Q",
        ),
        DecodeResult(request_id="r1", device_id="car-7", answer="Paris", mode="int8", model="m", generated_tokens=2),
        ErrorReply(code=ErrorCode.BLOB_MISSING, message="gone", request_id="r1"),
        LinkState(device_id="car-7", rate_bps=1e8, source="shaper", at=1700000000.0),
        Health(role="selector", instance="pod-1", ready=True, checks={"bus": True}, at=1.0),
        PlanRequest(request_id="r3", device_id="car-7", context_tokens=1024, prompt_tokens=1060, deadline_ms=2000),
    ]


def test_modes_match_the_policy_and_tasks_the_prompts() -> None:
    assert get_args(Mode) == KNOWN_MODES
    with pytest.raises(BadRequest, match="task"):
        parse(AskRequest, _ask(task="poetry"))


@pytest.mark.parametrize("message", samples(), ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    data = message.to_bytes()
    assert json.loads(data)["schema_version"] == 1
    assert parse(type(message), data) == message


def _ask(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "schema_version": 1,
        "type": "ask",
        "request_id": "r1",
        "device_id": "car-7",
        "document": "Some document.",
        "question": "What?",
        "deadline_ms": 1000,
    }
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_ask_document_xor_reference() -> None:
    assert parse(AskRequest, _ask()).document == "Some document."
    assert parse(AskRequest, _ask(document=..., document_ref=SHA)).document_ref == SHA
    with pytest.raises(BadRequest, match="exactly one"):
        parse(AskRequest, _ask(document_ref=SHA))
    with pytest.raises(BadRequest, match="exactly one"):
        parse(AskRequest, _ask(document=...))
    with pytest.raises(BadRequest):
        parse(AskRequest, _ask(document=..., document_ref="NOTASHA"))


def test_limits_are_enforced_and_configurable() -> None:
    small = Limits(max_document_bytes=10, max_question_chars=5, max_new_tokens=8, max_deadline_ms=5000)
    assert parse(AskRequest, _ask(document="x" * 10, question="12345", max_new_tokens=8), limits=small)
    for change in (
        {"document": "x" * 11},
        {"document": "é" * 6},  # 12 UTF-8 bytes in 6 characters
        {"question": "123456"},
        {"max_new_tokens": 9},
        {"deadline_ms": 5001},
        {"deadline_ms": 0},
    ):
        with pytest.raises(BadRequest):
            parse(AskRequest, _ask(**change), limits=small)
    # The defaults apply to models built in code, too (pydantic's ValidationError is a ValueError).
    with pytest.raises(ValueError, match="document exceeds"):
        AskRequest(
            request_id="r",
            device_id="d",
            document="x" * (DEFAULT_LIMITS.max_document_bytes + 1),
            question="q",
            deadline_ms=10,
        )
    with pytest.raises(ValueError):
        Limits(min_deadline_ms=10, max_deadline_ms=5)


def test_plan_request_prompt_tokens() -> None:
    """The prompt holds the context and more; KV modes carry all of it but its last token."""
    old = PlanRequest(request_id="r", device_id="d", context_tokens=100, deadline_ms=10)
    new = PlanRequest(request_id="r", device_id="d", context_tokens=100, prompt_tokens=130, deadline_ms=10)
    assert old.extra_tokens == 0 and new.extra_tokens == 29
    for bad in (100, 50, 0, 1 << 25):
        with pytest.raises(ValueError):
            PlanRequest(request_id="r", device_id="d", context_tokens=100, prompt_tokens=bad, deadline_ms=10)


def test_size_is_checked_before_json_parsing() -> None:
    junk = b"\xff" * 2048  # not JSON at all: the size check must answer first
    with pytest.raises(TooLarge):
        parse(AskRequest, junk, max_bytes=1024)
    with pytest.raises(BadRequest) as info:
        parse(AskRequest, junk, max_bytes=4096)
    assert type(info.value) is BadRequest
    with pytest.raises(TooLarge):
        parse(AskRequest, b"{" * (DEFAULT_LIMITS.max_message_bytes + 1))


@pytest.mark.parametrize("version", [None, 0, 2, "1", 1.0, True, [1], {"v": 1}])
def test_wrong_versions_are_typed(version: Any) -> None:
    body = json.loads(_ask())
    body["schema_version"] = version
    with pytest.raises(UnsupportedVersion):
        parse(AskRequest, json.dumps(body).encode())
    del body["schema_version"]
    with pytest.raises(UnsupportedVersion, match="no schema_version"):
        parse(AskRequest, json.dumps(body).encode())


def test_version_is_checked_before_the_body() -> None:
    """A newer sender gets 'unsupported version', not field errors from a schema it does not speak."""
    with pytest.raises(UnsupportedVersion):
        parse(AskRequest, json.dumps({"schema_version": 2, "whole_new": "shape"}).encode())


@pytest.mark.parametrize(
    "data",
    [b"", b"null", b"[]", b'"x"', b"1", b"{", b'{"schema_version": 1, "x": NaN}', b"[" * 10_000, b"\x00\x01"],
)
def test_malformed_input_is_bad_request(data: bytes) -> None:
    with pytest.raises(BadRequest):
        parse(AskRequest, data)


def test_unknown_fields_and_wrong_type_are_refused() -> None:
    with pytest.raises(BadRequest, match="admin: Extra inputs"):
        parse(AskRequest, _ask(admin=True))
    with pytest.raises(BadRequest, match="expected a 'ask'"):
        parse(AskRequest, _ask(type="decode"))
    reply = AskReply(request_id="r", device_id="d", answer="a", mode="local", bytes_sent=0)
    with pytest.raises(ValueError, match="frozen"):
        reply.answer = "b"  # type: ignore[misc]


def test_error_messages_do_not_echo_input() -> None:
    secret = "hunter2-" * 10
    with pytest.raises(BadRequest) as info:
        parse(AskRequest, _ask(device_id=secret))
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_replies_become_typed_exceptions(code: ErrorCode) -> None:
    reply = ErrorReply(code=code, message="why", request_id="r9")
    with pytest.raises(ScoutError) as info:
        parse_reply(AskReply, reply.to_bytes())
    assert info.value.code == code and info.value.request_id == "r9"
    assert type(info.value) is type(error_for_code(code, ""))
    back = ErrorReply.from_error(info.value)
    assert back.code == code and back.retryable == info.value.retryable
    with pytest.raises(BlobMissing):
        parse_reply(DecodeResult, ErrorReply(code=ErrorCode.BLOB_MISSING).to_bytes())


def test_parse_reply_passes_answers_through() -> None:
    result = samples()[7]
    assert parse_reply(DecodeResult, result.to_bytes()) == result


def _decode(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(samples()[5].to_bytes())
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def test_decode_request_mode_rules() -> None:
    ok = parse(DecodeRequest, json.dumps(_decode()).encode())
    assert ok.mode == "int8" and ok.positions_bytes() is None
    bad_cases = [
        {"blob_key": ...},  # KV mode without a blob
        {"blob_key": f"scout:blob:other-device:{BLOB_SHA}"},  # someone else's blob
        {"blob_key": f"scout:blob:car-7:{SHA}"},  # a key that does not match the checksum
        {"blob_key": "scout:blob:car-7:x y"},
        {"blob_bytes": DEFAULT_LIMITS.max_blob_bytes + 1},
        {"mode": "scout"},  # scout mode with a blob and without positions
        {"mode": "local"},  # never reaches the cloud
        {"reply_to": "a b"},
        {"reply_to": "_INBOX.*"},
        {"model_fingerprint": "xyz"},
        {"suffix_token_ids": [-1]},
        {"suffix_token_ids": [1 << 31]},
        {"context_tokens": DEFAULT_LIMITS.max_context_tokens + 1},
        {"trace_context": {"traceparent": "a\r\nb"}},
        {"trace_context": {f"k{i}": "v" for i in range(9)}},
    ]
    for change in bad_cases:
        with pytest.raises(BadRequest):
            parse(DecodeRequest, json.dumps(_decode(**change)).encode())
    scout = {"blob_key": ..., "blob_bytes": ..., "blob_sha256": ..., "mode": "scout", "document_ref": SHA}
    for change in ({}, {"positions": "!!!not base64"}, {"document_ref": ...}):
        with pytest.raises(BadRequest):
            parse(DecodeRequest, json.dumps(_decode(**{**scout, **change})).encode())
    text = {**scout, "mode": "text"}
    assert parse(DecodeRequest, json.dumps(_decode(**text)).encode()).mode == "text"
    with pytest.raises(BadRequest):
        parse(DecodeRequest, json.dumps(_decode(**{**text, "positions": "AAAA"})).encode())


def test_positions_decode_against_context_tokens() -> None:
    msg = samples()[6]
    assert isinstance(msg, DecodeRequest)
    assert msg.kept_positions().tolist() == [1, 5, 9]
    # A set encoded for 100 tokens claimed against 8: out of range -> typed error, not an exception from numpy.
    short = msg.model_copy(update={"context_tokens": 8})
    with pytest.raises(BadRequest, match="position set"):
        short.kept_positions()
    truncated = msg.model_copy(update={"positions": DecodeRequest.encode_positions(msg.positions_bytes()[:-1])})
    with pytest.raises(BadRequest):
        truncated.kept_positions()
    with pytest.raises(BadRequest):
        msg.kept_positions(max_n=50)
    with pytest.raises(BadRequest, match="positions exceed"):
        parse(
            DecodeRequest,
            msg.to_bytes(),
            limits=Limits(max_positions_bytes=1),
        )


def test_plan_from_planner() -> None:
    from scout.policy.plans import Plan as CorePlan

    assert issubclass(Plan, CorePlan)  # one set of fields: the bus message is the planner's plan plus an envelope
    core = CorePlan(
        request_id="r5",
        model_pair="qwen-0.5b->1.5b",
        mode="scout",
        retention=0.25,
        point="scout@25",
        bit_plan="",
        expected_bytes=140,
        expected_quality=math.nan,
        expected_time_s=math.inf,
        compute_s=0.5,
        transfer_s=math.inf,
        deadline_s=1.0,
        bandwidth_bps=0.0,
        feasible=False,
        fallback=True,
        reason="nothing fits",
    )
    assert core.bytes == 140
    plan = Plan.from_planner(core)
    assert plan.mode == "scout" and plan.expected_bytes == 140 and plan.fallback and not plan.feasible
    assert plan.expected_time_s is None and plan.transfer_s is None and plan.expected_quality is None
    assert plan.compute_s == 0.5 and plan.bandwidth_bps == 0.0 and plan.reason == core.reason
    assert parse(Plan, plan.to_bytes()) == plan
    wire = json.loads(plan.to_bytes())
    assert set(wire) == {"type", "schema_version", *CorePlan.model_fields} and wire["expected_time_s"] is None
    with pytest.raises(ValueError, match="at most 1024"):  # the bound is the core's: the planner cannot exceed it
        CorePlan.model_validate(core.model_dump() | {"reason": "x" * 1025})
    with pytest.raises(ValueError, match="finite or null"):
        Plan(request_id="r6", mode="int8", expected_bytes=1, expected_time_s=math.inf)
    with pytest.raises(BadRequest):  # a string "Infinity" would validate as a float: the bus refuses it
        parse(Plan, plan.to_bytes().replace(b'"compute_s":0.5', b'"compute_s":"Infinity"'))


def test_link_state_bounds() -> None:
    for bad in ({"rate_bps": -1}, {"rate_bps": float("nan")}, {"source": "guess"}, {"device_id": "a.b"}):
        body = {"device_id": "d", "rate_bps": 1.0, "source": "goodput", "at": 1.0, **bad}
        with pytest.raises(ValueError):
            LinkState.model_validate(body)


# --- fuzz ----------------------------------------------------------------------------------------------------
MODELS = [AskRequest, AskReply, PlanRequest, Plan, DecodeRequest, DecodeResult, ErrorReply, LinkState, Health]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _only_typed(model: type[Message], data: bytes, max_bytes: int | None = None) -> None:
    with contextlib.suppress(BadRequest):  # BadRequest, UnsupportedVersion, TooLarge: all typed; nothing else
        parse(model, data, max_bytes)


@given(st.sampled_from(MODELS), st.binary(max_size=2048))
def test_fuzz_random_bytes(model: type[Message], data: bytes) -> None:
    _only_typed(model, data)


@given(st.sampled_from(MODELS), json_values)
def test_fuzz_random_json(model: type[Message], value: Any) -> None:
    _only_typed(model, json.dumps(value).encode())


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(samples()) - 1), st.data())
def test_fuzz_mutated_valid_messages(index: int, data: st.DataObject) -> None:
    message = samples()[index]
    body = json.loads(message.to_bytes())
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(json_values)
    if data.draw(st.booleans()):
        body[data.draw(st.text(max_size=8))] = data.draw(json_values)
    _only_typed(type(message), json.dumps(body).encode())


@given(
    st.sampled_from(MODELS),
    st.one_of(
        st.integers().filter(lambda v: v != 1), st.text(), st.floats(allow_nan=False, allow_infinity=False), st.none()
    ),
)
def test_fuzz_wrong_versions(model: type[Message], version: Any) -> None:
    body = json.loads(samples()[0].to_bytes())
    body["schema_version"] = version
    with pytest.raises(UnsupportedVersion):
        parse(model, json.dumps(body).encode())


@given(st.integers(1, 4096), st.binary(min_size=1, max_size=64))
def test_fuzz_oversized(limit: int, unit: bytes) -> None:
    data = unit * (limit // len(unit) + 1)
    with pytest.raises(TooLarge):
        parse(AskRequest, data, max_bytes=min(limit, len(data) - 1))
