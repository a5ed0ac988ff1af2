"""Selector -> quantizer (`EncodeRequest`, `EncodeReply`) and -> cloud decoder (`DecodeRequest`, `DecodeResult`):
the two requests that carry a context to the cloud, checked against the same limits (`check_request_limits`)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from scout.policy.plans import KV_MODES, CloudMode, KVMode
from scout.positions import PositionSetError, decode_positions
from scout_runtime.errors import BadRequest
from scout_runtime.limits import DEFAULT_LIMITS, Limits
from scout_runtime.messages.base import (
    BLOB_KEY_RE,
    Fingerprint,
    Message,
    Name,
    ReplySubject,
    Retention,
    Sha256Hex,
    Timings,
    TraceContext,
    limits_of,
)
from scout_runtime.subjects import DeviceId, Token

if TYPE_CHECKING:
    import numpy as np


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
    reply_to: ReplySubject
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

    @field_validator("blob_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not BLOB_KEY_RE.fullmatch(value):
            raise ValueError("blob_key must be 1-256 characters of [A-Za-z0-9_:.-]")
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> DecodeRequest:
        limits = limits_of(info)
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
        check_request_limits(self, limits)
        return self

    def positions_bytes(self) -> bytes | None:
        """The encoded position set (validated base64 at construction)."""
        return None if self.positions is None else base64.b64decode(self.positions, validate=True)

    def kept_positions(self, max_n: int | None = None) -> np.ndarray:
        """The decoded kept positions, a sorted int64 array within ``range(context_tokens)``.

        Raises `BadRequest` for a set that does not decode against ``context_tokens`` (out of range, truncated,
        non-canonical); ``max_n`` caps ``context_tokens`` (default: `DEFAULT_LIMITS.max_context_tokens`).
        """
        data = self.positions_bytes()
        if data is None:
            raise BadRequest(f"mode {self.mode} carries no position set", request_id=self.request_id)
        try:
            return decode_positions(
                data, self.context_tokens, max_n=max_n or DEFAULT_LIMITS.max_context_tokens, require_checksum=True
            )
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
    reply_to: ReplySubject
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

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> EncodeRequest:
        limits = limits_of(info)
        sha = self.raw_blob_sha256
        if not BLOB_KEY_RE.fullmatch(self.raw_blob_key) or not re.fullmatch(
            rf"(?:[A-Za-z0-9_.-]+:)*blob:{re.escape(self.device_id)}:{sha}", self.raw_blob_key
        ):
            raise ValueError("raw_blob_key does not name this device's blob with this sha256")
        if self.raw_blob_bytes > limits.max_blob_bytes:
            raise ValueError(f"raw_blob_bytes {self.raw_blob_bytes} exceeds the limit of {limits.max_blob_bytes}")
        if self.context_start + self.context_tokens > self.prompt_tokens - 1:
            raise ValueError("the context must lie within the cached prompt (all tokens but the last)")
        check_request_limits(self, limits)
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


def check_request_limits(req: DecodeRequest | EncodeRequest, limits: Limits) -> None:
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
