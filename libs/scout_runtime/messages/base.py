"""What every bus message shares: the `Message` base (versioned, closed, frozen) and the checked field types."""

from __future__ import annotations

import math
import re
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from scout_runtime.limits import DEFAULT_LIMITS, Limits
from scout_runtime.subjects import is_valid_subject

SCHEMA_VERSION = 1

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{16}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:+-]{0,127}")
_STAGE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
BLOB_KEY_RE = re.compile(r"[A-Za-z0-9_:.-]{1,256}")
_TRACE_KEY_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_TIMINGS = 32
MAX_TRACE_ENTRIES = 4
MAX_TRACE_VALUE_CHARS = 512


# --- field types ---------------------------------------------------------------------------------------------
def _sha256(value: str) -> str:
    if not _SHA_RE.fullmatch(value):
        raise ValueError("must be 64 lowercase hex digits (a SHA-256)")
    return value


def _fingerprint(value: str) -> str:
    if not _FINGERPRINT_RE.fullmatch(value):
        raise ValueError("must be 16 lowercase hex digits (ModelSpec.fingerprint)")
    return value


def _name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError("must be 1-128 characters of [A-Za-z0-9._/:+-], starting alphanumeric")
    return value


def _timings(value: dict[str, float]) -> dict[str, float]:
    if len(value) > MAX_TIMINGS:
        raise ValueError(f"at most {MAX_TIMINGS} timings")
    for stage, seconds in value.items():
        if not _STAGE_RE.fullmatch(stage):
            raise ValueError("timing names must match [a-z][a-z0-9_]{0,31}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("timings must be finite numbers of seconds >= 0")
    return value


def _trace_context(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_TRACE_ENTRIES:
        raise ValueError(f"at most {MAX_TRACE_ENTRIES} trace context entries")
    for key, text in value.items():
        if not _TRACE_KEY_RE.fullmatch(key):
            raise ValueError("trace context keys must be lowercase header names")
        if len(text) > MAX_TRACE_VALUE_CHARS or any(c in text for c in "\r\n\0"):
            raise ValueError(f"trace context values: at most {MAX_TRACE_VALUE_CHARS} chars, no control characters")
    return value


def _reply_subject(value: str) -> str:
    if not is_valid_subject(value):
        raise ValueError("reply_to must be a concrete subject of [A-Za-z0-9_-] tokens")
    return value


Sha256Hex = Annotated[str, AfterValidator(_sha256)]
Fingerprint = Annotated[str, AfterValidator(_fingerprint)]
Name = Annotated[str, AfterValidator(_name)]
Timings = Annotated[dict[str, float], AfterValidator(_timings)]
TraceContext = Annotated[dict[str, str], AfterValidator(_trace_context)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Retention = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
ReplySubject = Annotated[str, Field(max_length=256), AfterValidator(_reply_subject)]
"""The subject a result goes to (a concrete subject: no wildcards)."""


def limits_of(info: ValidationInfo) -> Limits:
    """The `Limits` a validation runs under: ``parse``'s context, else `DEFAULT_LIMITS`."""
    ctx = info.context
    if isinstance(ctx, dict):
        limits = ctx.get("limits")
        if isinstance(limits, Limits):
            return limits
    return DEFAULT_LIMITS


# --- base ----------------------------------------------------------------------------------------------------
class Message(BaseModel):
    """Base of every bus message: versioned, typed, closed (unknown fields are errors), immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=16 * 1024 * 1024)

    schema_version: Literal[1] = 1
    SUPPORTED_VERSIONS: ClassVar[frozenset[int]] = frozenset({SCHEMA_VERSION})

    def to_bytes(self) -> bytes:
        """The message as compact UTF-8 JSON (what goes on the bus)."""
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def type_name(cls) -> str:
        """The value of this model's ``type`` field."""
        (name,) = get_args(cls.model_fields["type"].annotation)
        return str(name)
