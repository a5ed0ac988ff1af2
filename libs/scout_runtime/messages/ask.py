"""The client's question (`AskRequest`, ``scout.v1.ask``) and the selector's answer (`AskReply`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from scout.policy.plans import Mode
from scout.prompts import TASKS
from scout_runtime.messages.base import Message, Name, Retention, Sha256Hex, Timings, limits_of
from scout_runtime.messages.plan import Plan
from scout_runtime.subjects import DeviceId, Token


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
        if value not in TASKS:
            raise ValueError(f"unknown task; known: {', '.join(TASKS)}")
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> AskRequest:
        limits = limits_of(info)
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
