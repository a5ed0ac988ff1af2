"""Subject names: one layout, validated device ids, namespaces for isolation, a reply-subject allowlist."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scout_runtime import subjects
from scout_runtime.errors import BadRequest
from scout_runtime.subjects import DEFAULT, Subjects, is_valid_subject, validate_device_id


def test_default_layout() -> None:
    assert subjects.ROOT == "scout.v1"
    assert subjects.ASK == "scout.v1.ask"
    assert subjects.PLAN == "scout.v1.plan"
    assert subjects.DECODE == "scout.v1.decode"
    assert subjects.ERRORS == "scout.v1.errors"
    assert subjects.DECODE_STREAM == "SCOUT_DECODE"
    assert subjects.DECODE_DURABLE == subjects.DECODE_QUEUE_GROUP == "scout-decoders"
    assert DEFAULT.link("car-7") == "scout.v1.link.car-7"
    assert DEFAULT.link_all == "scout.v1.link.*"
    assert DEFAULT.result("selector-1") == "scout.v1.result.selector-1"
    assert DEFAULT.health("cloud_decoder") == "scout.v1.health.cloud_decoder"


def test_namespace_prefixes_everything() -> None:
    s = Subjects("run42")
    assert s.ask == "run42.scout.v1.ask"
    assert s.link("d") == "run42.scout.v1.link.d"
    assert s.decode_stream == "SCOUT_DECODE_RUN42"
    for bad in ("a.b", "a b", "*", ">", "x" * 33):
        with pytest.raises(BadRequest):
            Subjects(bad)


@pytest.mark.parametrize("device_id", ["car-7", "robot_01", "A", "x" * 64, "0-_"])
def test_valid_device_ids(device_id: str) -> None:
    assert validate_device_id(device_id) == device_id


@pytest.mark.parametrize(
    "device_id", ["", "x" * 65, "a.b", "a*", "a>", "a b", "a\r\nb", "a:b", "ü", "a/b", "../x", "a\0"]
)
def test_invalid_device_ids(device_id: str) -> None:
    with pytest.raises(BadRequest):
        validate_device_id(device_id)
    with pytest.raises(BadRequest):
        DEFAULT.link(device_id)


@given(st.text(max_size=80))
def test_device_ids_never_escape_their_subject_token(text: str) -> None:
    try:
        subject = DEFAULT.link(text)
    except BadRequest:
        return
    assert subject.count(".") == 3 and subject.startswith("scout.v1.link.")
    assert is_valid_subject(subject)


def test_reply_subject_allowlist() -> None:
    assert DEFAULT.is_reply_subject("_INBOX.abc123.def")
    assert DEFAULT.is_reply_subject("scout.v1.result.selector-1")
    for bad in ("scout.v1.ask", "scout.v1.decode", "scout.v1.link.x", "scout.v1.result", "_INBOX.*", "a b", ""):
        assert not DEFAULT.is_reply_subject(bad)
    assert not Subjects("other").is_reply_subject("scout.v1.result.x")
