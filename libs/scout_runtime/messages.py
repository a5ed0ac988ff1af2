"""The messages on Scout's bus: one pydantic model per subject, each versioned, each bounded.

Every message carries ``schema_version`` (a ``Literal``: this reader knows exactly version 1) and ``type`` (which
message it is, so a reply subject can carry either the answer or an `ErrorReply` and the reader can tell them
apart before validating). Models forbid unknown fields and are frozen: what was validated is what is used.

`parse` is the only way bytes from another process become a model, and it trusts nothing:

1. the size is checked before any JSON parsing (`TooLarge`), so a 1 GB message costs nothing;
2. the JSON is parsed by pydantic-core (bounded recursion, no NaN/Infinity) into plain values;
3. ``schema_version`` is checked before the body: missing, non-integer or unknown -> `UnsupportedVersion`, so a
   newer sender gets a typed answer instead of a list of field errors from a schema it does not use;
4. the body is validated against the model, with the configured `Limits` in the validation context;
   every failure -> `BadRequest` (no other exception type ever leaves `parse`).

Large bytes never travel here (DESIGN.md): documents above `Limits.max_document_bytes` and every KV blob go to the
store, and the messages carry the reference (SHA-256), size and checksum. Position sets are small (hundreds of
bytes) and travel inline, base64-encoded `scout.positions` bytes.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, get_args

import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from scout_runtime.errors import (
    BadRequest,
    ErrorCode,
    ScoutError,
    TooLarge,
    UnsupportedVersion,
    error_for_code,
)
from scout_runtime.limits import DEFAULT_LIMITS, Limits
from scout_runtime.subjects import DeviceId, Token, is_valid_subject

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "KV_MODES",
    "AskReply",
    "AskRequest",
    "CloudMode",
    "DecodeRequest",
    "DecodeResult",
    "EncodeReply",
    "EncodeRequest",
    "ErrorReply",
    "Health",
    "LinkState",
    "Message",
    "Mode",
    "Plan",
    "PlanRequest",
    "Sha256Hex",
    "parse",
    "parse_reply",
]

SCHEMA_VERSION = 1

Mode = Literal["full", "int8", "int4", "mixed", "scout", "text", "local"]
"""What crosses the uplink (DESIGN.md's table); equal to `scout.policy.operating_points.KNOWN_MODES` (tested)."""
CloudMode = Literal["full", "int8", "int4", "mixed", "scout", "text"]
"""Modes a cloud decoder serves (``local`` never reaches the cloud)."""
KV_MODES: frozenset[str] = frozenset({"full", "int8", "int4", "mixed"})
"""Modes that ship a KV blob through the store."""
KVMode = Literal["full", "int8", "int4", "mixed"]
"""`KV_MODES` as a type (what the quantizer encodes)."""

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{16}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:+-]{0,127}")
_STAGE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_BLOB_KEY_RE = re.compile(r"[A-Za-z0-9_:.-]{1,256}")
_TRACE_KEY_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_TIMINGS = 32
MAX_TRACE_ENTRIES = 4
MAX_TRACE_VALUE_CHARS = 512
MAX_REASON_CHARS = 1024


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


Sha256Hex = Annotated[str, AfterValidator(_sha256)]
Fingerprint = Annotated[str, AfterValidator(_fingerprint)]
Name = Annotated[str, AfterValidator(_name)]
Timings = Annotated[dict[str, float], AfterValidator(_timings)]
TraceContext = Annotated[dict[str, str], AfterValidator(_trace_context)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Retention = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


def _limits(info: ValidationInfo) -> Limits:
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


# --- ask -----------------------------------------------------------------------------------------------------
class AskRequest(Message):
    """Client -> selector on ``scout.v1.ask``: answer ``question`` about a document (inline or by reference)."""

    type: Literal["ask"] = "ask"
    request_id: Token
    device_id: DeviceId
    document: str | None = None
    document_ref: Sha256Hex | None = None
    question: str = Field(min_length=1, max_length=1 << 20)
    deadline_ms: int = Field(ge=1, le=86_400_000)
    max_new_tokens: int = Field(default=32, ge=1, le=1 << 16)
    task: str = "extractive_qa"
    mode: Mode | None = None
    """Force this mode instead of asking the policy (experiments, ``scout ask --mode``)."""
    retention: Retention | None = None
    """Force this retention (fraction of context positions kept); 1.0 = no selection."""
    selector: Name | None = None
    """Force this selection method (registry name), e.g. ``q2c``."""

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from scout.prompts import TASKS  # light: scout.prompts imports nothing heavy

        if value not in TASKS:
            raise ValueError(f"unknown task; known: {', '.join(TASKS)}")
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> AskRequest:
        limits = _limits(info)
        if (self.document is None) == (self.document_ref is None):
            raise ValueError("exactly one of document and document_ref is required")
        if self.document is not None:
            # UTF-8 size without encoding the whole string when it is obviously too large (4 bytes per char max).
            n = len(self.document)
            if n > limits.max_document_bytes or (
                n * 4 > limits.max_document_bytes and len(self.document.encode("utf-8")) > limits.max_document_bytes
            ):
                raise ValueError(f"document exceeds {limits.max_document_bytes} bytes; stage it and send document_ref")
        if len(self.question) > limits.max_question_chars:
            raise ValueError(f"question exceeds {limits.max_question_chars} characters")
        if self.max_new_tokens > limits.max_new_tokens:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} exceeds the limit of {limits.max_new_tokens}")
        if not limits.min_deadline_ms <= self.deadline_ms <= limits.max_deadline_ms:
            raise ValueError(f"deadline_ms must be in [{limits.min_deadline_ms}, {limits.max_deadline_ms}]")
        return self


# --- plan ----------------------------------------------------------------------------------------------------
class PlanRequest(Message):
    """Selector -> transport policy on ``scout.v1.plan``: what to send for this request, now."""

    type: Literal["plan_request"] = "plan_request"
    request_id: Token
    device_id: DeviceId
    model_pair: Name | None = None
    context_tokens: int = Field(ge=0, le=1 << 24)
    deadline_ms: int = Field(ge=1, le=86_400_000)
    elapsed_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """Time already spent on the request (tokenize, prefill, score) when the plan is asked for."""
    prompt_tokens: int | None = Field(default=None, ge=1, le=1 << 24)
    """The whole prompt (instruction, context, question). KV modes send the cache of all but its last token, so
    the policy sizes them from this; None (an older sender) sizes the context alone."""
    mode: Mode | None = None
    """A forced mode: the policy plans it (bytes, time) instead of choosing."""
    retention: Retention | None = None

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> PlanRequest:
        limits = _limits(info)
        if self.context_tokens > limits.max_context_tokens:
            raise ValueError(f"context_tokens exceeds the limit of {limits.max_context_tokens}")
        if not limits.min_deadline_ms <= self.deadline_ms <= limits.max_deadline_ms:
            raise ValueError(f"deadline_ms must be in [{limits.min_deadline_ms}, {limits.max_deadline_ms}]")
        if self.prompt_tokens is not None:
            if self.prompt_tokens <= self.context_tokens:
                raise ValueError("prompt_tokens must exceed context_tokens (the prompt holds the context and more)")
            if self.prompt_tokens > limits.max_context_tokens + limits.max_question_chars + 1024:
                raise ValueError("prompt_tokens exceeds the context and question limits")
        return self

    @property
    def extra_tokens(self) -> int:
        """Cache tokens outside the context that KV modes send in full (0 when ``prompt_tokens`` is not given)."""
        return 0 if self.prompt_tokens is None else self.prompt_tokens - 1 - self.context_tokens


class Plan(Message):
    """Transport policy -> selector: the chosen operating point, what it should cost, and why.

    Field names follow `scout.policy.planner.Plan` (``bytes`` is ``expected_bytes`` here); `from_planner` converts.
    ``expected_time_s`` is None when no mode can finish at all (the planner's infinity, which JSON cannot carry).
    """

    type: Literal["plan"] = "plan"
    request_id: Token
    model_pair: str = Field(default="", max_length=256)
    mode: Mode
    retention: Retention = 1.0
    point: str = Field(default="", max_length=256)
    bit_plan: str = Field(default="", max_length=256)
    expected_bytes: int = Field(ge=0)
    expected_quality: float | None = Field(default=None, allow_inf_nan=False)
    expected_time_s: Seconds | None = None
    compute_s: Seconds | None = None
    transfer_s: Seconds | None = None
    deadline_s: Seconds | None = None
    bandwidth_bps: Seconds | None = None
    feasible: bool = True
    fallback: bool = False
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)

    @classmethod
    def from_planner(cls, plan: Any, *, request_id: str | None = None) -> Plan:
        """Convert a `scout.policy.planner.Plan` (duck-typed, so this module never imports the planner)."""

        def finite(value: float) -> float | None:
            return float(value) if math.isfinite(value) else None

        return cls(
            request_id=request_id or plan.request_id,
            model_pair=plan.model_pair,
            mode=plan.mode,
            retention=plan.retention,
            point=plan.point,
            bit_plan=plan.bit_plan,
            expected_bytes=plan.bytes,
            expected_quality=finite(plan.expected_quality),
            expected_time_s=finite(plan.expected_time_s),
            compute_s=finite(plan.compute_s),
            transfer_s=finite(plan.transfer_s),
            deadline_s=finite(plan.deadline_s),
            bandwidth_bps=finite(plan.bandwidth_bps),
            feasible=plan.feasible,
            fallback=plan.fallback,
            reason=plan.reason[:MAX_REASON_CHARS],
        )


class AskReply(Message):
    """Selector -> client: the answer, how it was produced, what crossed the uplink, and the time per stage."""

    type: Literal["ask_reply"] = "ask_reply"
    request_id: Token
    device_id: DeviceId
    answer: str = Field(max_length=16 * 1024 * 1024)
    mode: Mode
    retention: Retention = 1.0
    bytes_sent: int = Field(ge=0)
    timings: Timings = Field(default_factory=dict)
    """Seconds per stage: prefill, score, plan, encode, transfer, fetch, decode, generate, total."""
    plan: Plan | None = None
    answered_by: Literal["cloud", "edge"] = "cloud"
    edge_model: str = Field(default="", max_length=256)
    cloud_model: str = Field(default="", max_length=256)
    deliveries: int = Field(default=1, ge=1)
    """How many times the decode request was delivered (more than one: a decoder died or nak'ed it)."""


# --- decode --------------------------------------------------------------------------------------------------
class DecodeRequest(Message):
    """Edge -> any cloud decoder, on the ``scout.v1.decode`` work queue.

    KV modes reference a staged blob (key, size, SHA-256; the decoder fetches and verifies it); ``scout`` mode
    carries the kept position set and the document reference (the decoder re-prefills its own model); ``text``
    mode carries only the document reference (full re-prefill). The decoder answers on ``reply_to`` after checking
    it with `Subjects.is_reply_subject` (an inbox or a result subject: never a request subject), and fetches the
    blob with `BlobStore.get_blob(blob_key, device_id=...)`, which refuses another device's key.
    """

    type: Literal["decode"] = "decode"
    request_id: Token
    reply_to: str = Field(max_length=256)
    device_id: DeviceId
    model: Name
    model_fingerprint: Fingerprint
    mode: CloudMode
    retention: Retention = 1.0
    bit_plan: str = Field(default="", max_length=256)
    blob_key: str | None = None
    blob_bytes: int | None = Field(default=None, ge=0)
    blob_sha256: Sha256Hex | None = None
    positions: str | None = Field(default=None, max_length=32 * 1024 * 1024)
    """Base64 of `scout.positions.encode_positions` bytes (scout mode)."""
    context_tokens: int = Field(ge=0, le=1 << 24)
    suffix_token_ids: list[Annotated[int, Field(ge=0, lt=1 << 31)]] = Field(default_factory=list, max_length=1 << 20)
    """Token ids after the context (question and answer cue), as the edge tokenized them (KV modes)."""
    document_ref: Sha256Hex | None = None
    question: str = Field(min_length=1, max_length=1 << 20)
    task: str = Field(default="extractive_qa", max_length=64)
    max_new_tokens: int = Field(default=32, ge=1, le=1 << 16)
    deadline_unix_ms: int | None = Field(default=None, ge=0)
    """Absolute deadline: a decoder may refuse (``timeout``) work that can no longer be answered in time."""
    trace_context: TraceContext = Field(default_factory=dict)
    """W3C trace context (``traceparent``/``tracestate``). NATS headers are authoritative; this copy lets a
    request that was stored or re-published without its headers still be linked to its trace."""

    @field_validator("reply_to")
    @classmethod
    def _subject(cls, value: str) -> str:
        if not is_valid_subject(value):
            raise ValueError("reply_to must be a concrete subject of [A-Za-z0-9_-] tokens")
        return value

    @field_validator("blob_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not _BLOB_KEY_RE.fullmatch(value):
            raise ValueError("blob_key must be 1-256 characters of [A-Za-z0-9_:.-]")
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> DecodeRequest:
        limits = _limits(info)
        key, size, sha = self.blob_key, self.blob_bytes, self.blob_sha256
        if self.mode in KV_MODES:
            if key is None or size is None or sha is None:
                raise ValueError(f"mode {self.mode} needs blob_key, blob_bytes and blob_sha256")
            if size > limits.max_blob_bytes:
                raise ValueError(f"blob_bytes {size} exceeds the limit of {limits.max_blob_bytes}")
            # The key must name this device's blob of this content: <prefix>blob:<device_id>:<sha256>.
            if not re.fullmatch(rf"(?:[A-Za-z0-9_.-]+:)*blob:{re.escape(self.device_id)}:{sha}", key):
                raise ValueError("blob_key does not name this device's blob with this sha256")
            if self.positions is not None:
                raise ValueError(f"mode {self.mode} carries positions in the blob, not in the message")
        else:
            if key is not None or size is not None or sha is not None:
                raise ValueError(f"mode {self.mode} carries no blob")
            if self.document_ref is None:
                raise ValueError(f"mode {self.mode} needs document_ref")
            if self.mode == "scout" and self.positions is None:
                raise ValueError("scout mode needs positions")
            if self.mode == "text" and self.positions is not None:
                raise ValueError("text mode sends no positions (use scout mode to select)")
        _check_request_limits(self, limits)
        return self

    def positions_bytes(self) -> bytes | None:
        """The encoded position set (validated base64 at construction)."""
        return None if self.positions is None else base64.b64decode(self.positions, validate=True)

    def kept_positions(self, max_n: int | None = None) -> np.ndarray:
        """The decoded kept positions, a sorted int64 array within ``range(context_tokens)``.

        Raises `BadRequest` for a set that does not decode against ``context_tokens`` (out of range, truncated,
        non-canonical); ``max_n`` caps ``context_tokens`` (default: `DEFAULT_LIMITS.max_context_tokens`).
        """
        from scout.positions import PositionSetError, decode_positions

        data = self.positions_bytes()
        if data is None:
            raise BadRequest(f"mode {self.mode} carries no position set", request_id=self.request_id)
        try:
            return decode_positions(data, self.context_tokens, max_n=max_n or DEFAULT_LIMITS.max_context_tokens)
        except PositionSetError as e:
            raise BadRequest(f"invalid position set: {e}", request_id=self.request_id) from None

    @staticmethod
    def encode_positions(data: bytes) -> str:
        """Base64 text for the ``positions`` field."""
        return base64.b64encode(data).decode("ascii")


class DecodeResult(Message):
    """Cloud decoder -> the decode request's ``reply_to``: the generated answer and the decoder-side timings."""

    type: Literal["decode_result"] = "decode_result"
    request_id: Token
    device_id: DeviceId
    answer: str = Field(max_length=16 * 1024 * 1024)
    mode: CloudMode
    model: Name
    generated_tokens: int = Field(ge=0)
    timings: Timings = Field(default_factory=dict)
    """Seconds per decoder stage: fetch, verify, decode (dequantize/rebuild or re-prefill), generate."""
    decoder_id: str = Field(default="", max_length=128)
    deliveries: int = Field(default=1, ge=1)


# --- encode (selector -> quantizer) --------------------------------------------------------------------------
class EncodeRequest(Message):
    """Selector -> quantizer on ``scout.v1.encode``: encode the staged raw KV per plan, upload it, enqueue the decode.

    The raw KV (the hand-off cache, every layer at 16 bits) is staged in the *edge* store under
    ``raw_blob_key`` (``<prefix>blob:<device_id>:<sha256>``, checked like `DecodeRequest.blob_key`). With
    ``positions`` (base64 `scout.positions` bytes over the ``context_tokens`` context positions), only the kept
    context positions survive (eviction); ``context_start`` says where the context lies in the prompt of
    ``prompt_tokens`` tokens. The decode fields (``reply_to``, ``suffix_token_ids``, ``question``, …) are copied
    into the `DecodeRequest` the quantizer enqueues.
    """

    type: Literal["encode"] = "encode"
    request_id: Token
    reply_to: str = Field(max_length=256)
    device_id: DeviceId
    model: Name
    model_fingerprint: Fingerprint
    mode: KVMode
    retention: Retention = 1.0
    bit_plan: str = Field(min_length=1, max_length=256)
    raw_blob_key: str
    raw_blob_bytes: int = Field(ge=0)
    raw_blob_sha256: Sha256Hex
    positions: str | None = Field(default=None, max_length=32 * 1024 * 1024)
    context_start: int = Field(ge=0, le=1 << 24)
    context_tokens: int = Field(ge=0, le=1 << 24)
    prompt_tokens: int = Field(ge=1, le=1 << 24)
    suffix_token_ids: list[Annotated[int, Field(ge=0, lt=1 << 31)]] = Field(default_factory=list, max_length=1 << 20)
    question: str = Field(min_length=1, max_length=1 << 20)
    task: str = Field(default="extractive_qa", max_length=64)
    max_new_tokens: int = Field(default=32, ge=1, le=1 << 16)
    trace_context: TraceContext = Field(default_factory=dict)

    @field_validator("reply_to")
    @classmethod
    def _subject(cls, value: str) -> str:
        if not is_valid_subject(value):
            raise ValueError("reply_to must be a concrete subject of [A-Za-z0-9_-] tokens")
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> EncodeRequest:
        limits = _limits(info)
        sha = self.raw_blob_sha256
        if not _BLOB_KEY_RE.fullmatch(self.raw_blob_key) or not re.fullmatch(
            rf"(?:[A-Za-z0-9_.-]+:)*blob:{re.escape(self.device_id)}:{sha}", self.raw_blob_key
        ):
            raise ValueError("raw_blob_key does not name this device's blob with this sha256")
        if self.raw_blob_bytes > limits.max_blob_bytes:
            raise ValueError(f"raw_blob_bytes {self.raw_blob_bytes} exceeds the limit of {limits.max_blob_bytes}")
        if self.context_start + self.context_tokens > self.prompt_tokens - 1:
            raise ValueError("the context must lie within the cached prompt (all tokens but the last)")
        _check_request_limits(self, limits)
        return self

    def positions_bytes(self) -> bytes | None:
        """The encoded kept-position set (validated base64 at construction), or None: no selection."""
        return None if self.positions is None else base64.b64decode(self.positions, validate=True)


class EncodeReply(Message):
    """Quantizer -> selector: what crossed the uplink (the staged blob), how long it took, and the enqueue."""

    type: Literal["encode_reply"] = "encode_reply"
    request_id: Token
    device_id: DeviceId
    blob_key: str = Field(max_length=256)
    blob_bytes: int = Field(ge=0)
    blob_sha256: Sha256Hex
    kept_tokens: int = Field(ge=0)
    """Cached tokens in the blob (the hand-off cache after eviction)."""
    timings: Timings = Field(default_factory=dict)
    """Seconds per quantizer stage: fetch (raw KV), encode, upload (the uplink transfer), enqueue."""
    goodput_bps: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Measured upload goodput (also published as a `LinkState` with ``source="goodput"``)."""
    sequence: int = Field(default=0, ge=0)
    """The decode request's JetStream sequence."""


# --- errors, link state, health ------------------------------------------------------------------------------
class ErrorReply(Message):
    """A typed failure, sent instead of the expected reply (or on ``scout.v1.errors``)."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str = Field(default="", max_length=1024)
    request_id: str | None = Field(default=None, max_length=64)
    retryable: bool = False

    @classmethod
    def from_error(cls, error: ScoutError, request_id: str | None = None) -> ErrorReply:
        """The reply for a local error (``request_id`` wins over the one the error carries)."""
        return cls(
            code=error.code,
            message=error.message,
            request_id=request_id if request_id is not None else error.request_id,
            retryable=error.retryable,
        )

    def to_error(self) -> ScoutError:
        """The local exception this reply stands for (`BlobMissing` for ``blob_missing``, and so on)."""
        return error_for_code(self.code, self.message, request_id=self.request_id)


class LinkState(Message):
    """A device's uplink: the shaper's configured rate or a measured transfer goodput, at a point in time."""

    type: Literal["link_state"] = "link_state"
    device_id: DeviceId
    rate_bps: float = Field(ge=0, le=1e13, allow_inf_nan=False)
    source: Literal["shaper", "goodput"]
    at: float = Field(ge=0, allow_inf_nan=False)
    """Unix time in seconds."""


class Health(Message):
    """A service instance's liveness/readiness beacon."""

    type: Literal["health"] = "health"
    role: Token
    instance: str = Field(max_length=128)
    ready: bool
    checks: dict[Annotated[str, Field(max_length=64)], bool] = Field(default_factory=dict, max_length=32)
    at: float = Field(ge=0, allow_inf_nan=False)


# --- parsing -------------------------------------------------------------------------------------------------
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


def _check_request_limits(req: DecodeRequest | EncodeRequest, limits: Limits) -> None:
    """The limits a decode and an encode request share (context length, position set, suffix, question, output),
    checked in one place so the two messages cannot drift apart."""
    if req.context_tokens > limits.max_context_tokens:
        raise ValueError(f"context_tokens exceeds the limit of {limits.max_context_tokens}")
    if req.positions is not None:
        if len(req.positions) > 4 * ((limits.max_positions_bytes + 2) // 3):
            raise ValueError(f"positions exceed {limits.max_positions_bytes} bytes")
        try:
            base64.b64decode(req.positions, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("positions is not valid base64") from None
    if len(req.suffix_token_ids) > limits.max_suffix_tokens:
        raise ValueError(f"more than {limits.max_suffix_tokens} suffix tokens")
    if len(req.question) > limits.max_question_chars:
        raise ValueError(f"question exceeds {limits.max_question_chars} characters")
    if req.max_new_tokens > limits.max_new_tokens:
        raise ValueError(f"max_new_tokens {req.max_new_tokens} exceeds the limit of {limits.max_new_tokens}")


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
