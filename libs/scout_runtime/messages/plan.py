"""The transport policy's messages: the plan it is asked for (`PlanRequest`), the plan it answers (`Plan`), and the
link state it plans from (`LinkState`)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from scout.policy import plans
from scout.policy.plans import ContextTokens, Mode
from scout_runtime.messages.base import Message, Name, Retention, limits_of
from scout_runtime.subjects import DeviceId, Token

_FLOAT_FIELDS = ("expected_quality", "expected_time_s", "compute_s", "transfer_s", "deadline_s", "bandwidth_bps")


class PlanRequest(Message):
    """Selector -> transport policy on ``scout.v1.plan``: what to send for this request, now.

    The raw facts of the request (the whole deadline, the time already spent, the prompt length); the policy
    derives the planner's `scout.policy.plans.PlanRequest` from them (remaining deadline, `extra_tokens`).
    """

    type: Literal["plan_request"] = "plan_request"
    request_id: Token
    device_id: DeviceId
    model_pair: Name | None = None
    context_tokens: ContextTokens
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
        limits = limits_of(info)
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


class Plan(Message, plans.Plan):
    """Transport policy -> selector: the chosen operating point, what it should cost, and why.

    Every field is `scout.policy.plans.Plan`'s (one definition, shared with the planner); the message adds the
    envelope (``type``, ``schema_version``) and requires a request id and a known mode. JSON has no infinity, so
    a plan on the bus carries finite numbers or None: None for a time that never ends (no mode can finish at all)
    or a quality no table knows. `from_planner` converts a planner's plan (``inf``/``nan`` -> None).
    """

    type: Literal["plan"] = "plan"
    request_id: Token
    mode: Mode

    @model_validator(mode="after")
    def _finite(self) -> Plan:
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite or null on the bus")
        return self

    @classmethod
    def from_planner(cls, plan: plans.Plan, *, request_id: str | None = None) -> Plan:
        """The bus message for a planner's `scout.policy.plans.Plan` (non-finite numbers become None)."""
        fields: dict[str, Any] = plan.model_dump()
        for name in _FLOAT_FIELDS:
            value = fields[name]
            fields[name] = None if value is None or not math.isfinite(value) else float(value)
        fields["request_id"] = request_id or plan.request_id
        return cls(**fields)


class LinkState(Message):
    """A device's uplink: the shaper's configured rate or a measured transfer goodput, at a point in time."""

    type: Literal["link_state"] = "link_state"
    device_id: DeviceId
    rate_bps: float = Field(ge=0, le=1e13, allow_inf_nan=False)
    source: Literal["shaper", "goodput"]
    at: float = Field(ge=0, allow_inf_nan=False)
    """Unix time in seconds."""
