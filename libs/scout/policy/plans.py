"""What a plan is: the modes, the planner's input (`PlanRequest`) and its answer (`Plan`), and what a mode puts on
the uplink (`uplink_payload_bytes`).

Why here, in the core: the planner, the threshold rule, the simulation suite and the transport policy's bus
message all speak of the same plan. The bus message (`scout_runtime.messages.Plan`) subclasses this `Plan`, adding
only the envelope (``type``, ``schema_version``) and a stricter request id, so every field is defined once, here,
and the wire format cannot drift from what the planner fills in. The core keeps infinities (a transfer that never
finishes has ``expected_time_s = inf``) and NaN (quality unknown without an operating-point table); the bus message
carries None for both, since JSON has no infinity (`scout_runtime.messages.Plan.from_planner` converts).

Imports stay light (pydantic only): the runtime imports this module and must not pull in torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_MIXED_PLAN",
    "DOCUMENT_REF_BYTES",
    "KV_MODES",
    "MAX_CONTEXT_TOKENS",
    "MAX_REASON_CHARS",
    "MODES",
    "CloudMode",
    "ContextTokens",
    "JsonDocument",
    "KVMode",
    "Mode",
    "Plan",
    "PlanRequest",
    "bit_plan_for",
    "uplink_payload_bytes",
]

Mode = Literal["full", "int8", "int4", "mixed", "scout", "text", "local"]
"""What crosses the uplink (DESIGN.md's table); equal to `scout.policy.operating_points.KNOWN_MODES` (tested)."""
CloudMode = Literal["full", "int8", "int4", "mixed", "scout", "text"]
"""Modes a cloud decoder serves (``local`` never reaches the cloud)."""
KVMode = Literal["full", "int8", "int4", "mixed"]
"""Modes that ship a KV blob through the store (what the quantizer encodes)."""
MODES: tuple[str, ...] = get_args(Mode)
KV_MODES: frozenset[str] = frozenset(get_args(KVMode))
"""`KVMode` as a set: modes that ship a KV blob through the store."""

MAX_CONTEXT_TOKENS = 1 << 24
"""A hard ceiling on context lengths in any plan or message (the configured `Limits` are far lower)."""
MAX_REASON_CHARS = 1024
DOCUMENT_REF_BYTES = 32
"""A document reference is a SHA-256: 32 bytes of content (its hex spelling in JSON is envelope)."""

DEFAULT_MIXED_PLAN = "mixed:0=16"
"""The study's "mixed INT4": every layer at 4 bits except the bottleneck layer 0 at 16. A calibrated plan
(``scout calibrate``, ``reports/plans/*.json``) replaces it per model."""
_MODE_PLANS = {"full": "bf16", "int8": "int8", "int4": "int4", "scout": "positions"}

ContextTokens = Annotated[int, Field(ge=0, le=MAX_CONTEXT_TOKENS)]
"""Tokens of the document context (what selection keeps positions of)."""


class JsonDocument(BaseModel):
    """A model that is also a file: what the planner plans with (stage times, operating-point tables) is measured
    once (``scout bench``, ``scout eval``), written as indented JSON that diffs well under ``reports/``, and read back
    validated. One pair of methods, so every such file is read and written the same way (UTF-8, final newline)."""

    @classmethod
    def load(cls, path: str | Path) -> Self:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: str | Path) -> Path:
        """Write the JSON (creating folders); returns the path written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path


class PlanRequest(BaseModel):
    """What the planner needs to know about a request: the context, the deadline left, and the pair to plan for.

    The bus message ``scout.v1.plan`` (`scout_runtime.messages.PlanRequest`) carries the raw facts instead (the
    whole deadline in ms, the time already spent, the prompt length); `scout.policy.rules.plan_request` derives
    this request from them (remaining deadline, ``extra_tokens``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    context_tokens: ContextTokens
    deadline_s: float = Field(gt=0)
    model_pair: str | None = None
    request_id: str = ""
    extra_tokens: int = Field(default=0, ge=0)
    """Cache tokens outside the context (instruction, question) that KV modes send in full beside it."""


class Plan(BaseModel):
    """The planner's answer: what to send, what it should cost and yield, and why.

    ``expected_bytes`` is what the mode puts on the uplink (`uplink_payload_bytes`); ``bytes`` reads the same.
    Times are seconds; ``expected_time_s`` and ``transfer_s`` are infinite when the transfer can never finish (the
    bus message says None), ``expected_quality`` is relative to the table's reference for the model pair and NaN
    (None on the bus) when no table says.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    request_id: str = ""
    model_pair: str = Field(default="", max_length=256)
    mode: str = Field(max_length=64)
    """One of `MODES` in a real table (the bus message requires it); synthetic tables may name their own."""
    retention: float = Field(default=1.0, gt=0, le=1)
    point: str = Field(default="", max_length=256)
    bit_plan: str = Field(default="", max_length=256)
    expected_bytes: int = Field(ge=0)
    expected_quality: float | None = None
    expected_time_s: float | None = Field(default=None, ge=0)
    compute_s: float | None = Field(default=None, ge=0)
    transfer_s: float | None = Field(default=None, ge=0)
    deadline_s: float | None = Field(default=None, ge=0)
    bandwidth_bps: float | None = Field(default=None, ge=0)
    feasible: bool = True
    fallback: bool = False
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)

    @property
    def bytes(self) -> int:
        """``expected_bytes`` (the name the planner and the simulation read)."""
        return self.expected_bytes


def bit_plan_for(mode: str, mixed_plan: str = DEFAULT_MIXED_PLAN) -> str:
    """What `Plan.bit_plan` says for a mode: ``bf16`` for full, ``int8``/``int4``, the configured mixed plan,
    ``positions`` for scout, ``none`` for text and local (the names the operating-point tables use)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    return mixed_plan if mode == "mixed" else _MODE_PLANS.get(mode, "none")


def uplink_payload_bytes(mode: str, *, blob_bytes: int = 0, positions: bytes | None = None, question: str = "") -> int:
    """Bytes this request puts on the uplink (`scout.pipeline`'s module docstring says what counts).

    KV modes: the blob. Scout: the position set, the question and the document reference. Text: question and
    reference. Local: nothing. The message envelope and the (content-addressed, uploaded once) document are not
    counted.
    """
    if mode in KV_MODES:
        return int(blob_bytes)
    if mode == "scout":
        return len(positions or b"") + len(question.encode("utf-8")) + DOCUMENT_REF_BYTES
    if mode == "text":
        return len(question.encode("utf-8")) + DOCUMENT_REF_BYTES
    if mode == "local":
        return 0
    raise ValueError(f"unknown mode {mode!r}")
