"""`parse` and `parse_reply`: the only way bytes from another process become a message (see the package
docstring for the steps)."""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic_core
from pydantic import ValidationError

from scout_runtime.errors import BadRequest, TooLarge, UnsupportedVersion
from scout_runtime.limits import DEFAULT_LIMITS, Limits
from scout_runtime.messages.base import Message
from scout_runtime.messages.control import ErrorReply

M = TypeVar("M", bound=Message)


def _summarize(error: ValidationError) -> str:
    """A short description of validation errors: locations and messages, never the (untrusted) input values."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in item.get("loc", ())) or "message"
        parts.append(f"{loc}: {item.get('msg', 'invalid')}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _load(data: bytes | bytearray | memoryview, max_bytes: int) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadRequest(f"a message must be bytes, got {type(data).__name__}")
    size = memoryview(data).nbytes
    if size > max_bytes:
        raise TooLarge(f"message of {size} bytes exceeds the limit of {max_bytes}")
    try:
        obj = pydantic_core.from_json(bytes(data), allow_inf_nan=False)
    except ValueError as e:
        raise BadRequest(f"message is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise BadRequest("message must be a JSON object")
    return obj


def _check_version(obj: dict[str, Any], model_cls: type[Message]) -> None:
    if "schema_version" not in obj:
        raise UnsupportedVersion("message has no schema_version")
    version = obj["schema_version"]
    if type(version) is not int or version not in model_cls.SUPPORTED_VERSIONS:
        known = ", ".join(str(v) for v in sorted(model_cls.SUPPORTED_VERSIONS))
        raise UnsupportedVersion(f"this schema_version is not supported; this reader knows {known}")


def _validate(model_cls: type[M], obj: dict[str, Any], limits: Limits) -> M:
    expected = model_cls.type_name()
    if obj.get("type", expected) != expected:
        raise BadRequest(f"expected a {expected!r} message, got another type")
    try:
        return model_cls.model_validate(obj, context={"limits": limits})
    except ValidationError as e:
        raise BadRequest(f"invalid {expected} message: {_summarize(e)}") from None
    except (ValueError, TypeError, RecursionError) as e:  # defensive: a validator bug must still be typed
        raise BadRequest(f"invalid {expected} message: {type(e).__name__}") from None


def parse(
    model_cls: type[M],
    data: bytes | bytearray | memoryview,
    max_bytes: int | None = None,
    *,
    limits: Limits | None = None,
) -> M:
    """Bytes from the bus -> a validated ``model_cls``; raises only `TooLarge`, `UnsupportedVersion`, `BadRequest`.

    ``max_bytes`` defaults to ``limits.max_message_bytes``; ``limits`` to `DEFAULT_LIMITS`.
    """
    limits = limits or DEFAULT_LIMITS
    obj = _load(data, limits.max_message_bytes if max_bytes is None else max_bytes)
    _check_version(obj, model_cls)
    return _validate(model_cls, obj, limits)


def parse_reply(
    model_cls: type[M],
    data: bytes | bytearray | memoryview,
    max_bytes: int | None = None,
    *,
    limits: Limits | None = None,
) -> M:
    """Like `parse`, for a reply that may instead be an `ErrorReply`: that one is raised as its `ScoutError`."""
    limits = limits or DEFAULT_LIMITS
    obj = _load(data, limits.max_message_bytes if max_bytes is None else max_bytes)
    if obj.get("type") == ErrorReply.type_name():
        _check_version(obj, ErrorReply)
        raise _validate(ErrorReply, obj, limits).to_error()
    _check_version(obj, model_cls)
    return _validate(model_cls, obj, limits)
