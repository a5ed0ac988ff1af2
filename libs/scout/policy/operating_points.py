"""Operating points: for each way of answering a request (mode, retention, bit plan), what it sends and how good
the answer is. The planner chooses among them; the evaluation harness measures them.

Why sizes and qualities live together but come from different places: the quality of an operating point is a
measurement (``scout eval`` on a model pair, mean with a bootstrap CI over n examples) and must never be typed
in by hand; its size is arithmetic that must agree with what the codec really writes, byte for byte, or a plan
that "fits the deadline" does not. So sizes are built here from the codec itself (`kv_size_model` asks
`scout.codec.quant.estimate_bytes`, `positions_size_model` asks `scout.positions`) and stored in a closed form
the planner can evaluate without torch:

    bytes(n) = fixed_bytes + ceil(bytes_per_context_token * s) + bytes_per_token_group * ceil(s / token_group)

where ``s`` is the number of tokens the message carries: in KV modes (``size_basis="kept"``) the kept tokens
``ceil(retention * n)`` of an ``n``-token context plus the handed-off cache's tokens outside the context (the
instruction and the question, ``extra_tokens``: selection never drops them, so they always cross in full), or
all ``n`` in scout mode (``size_basis="context"``:
the position set is bounded by its bitmap, ``ceil(n / 8)`` bytes plus a tag byte, whatever the retention).
The group term is exact for channel-axis quantization (one fp16 scale and zero per ``group_size`` tokens per
channel); the builder checks the closed form against the codec at many lengths and refuses a geometry for
which it would be off.

Quality is stored in the table's metric (e.g. SQuAD F1); relative quality divides by the table's reference for
the model pair (the cloud model's own full-context answer unless the table says otherwise).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scout.policy.plans import JsonDocument

__all__ = [
    "KNOWN_MODES",
    "KVGeometry",
    "MeasuredQuality",
    "OperatingPoint",
    "OperatingPointTable",
    "SizeModel",
    "codec_size_models",
    "kept_tokens",
    "kv_size_model",
    "message_size_model",
    "positions_size_model",
]

KNOWN_MODES: tuple[str, ...] = ("full", "int8", "int4", "mixed", "scout", "text", "local")
"""Modes DESIGN.md defines (a table may add others, e.g. int2; the planner treats modes as names)."""

POSITIONS_ITEMSIZE = 4
"""Bytes per kept token of the blob's ``positions`` tensor (I32, `scout.codec.wire`)."""


def kept_tokens(context_tokens: int, retention: float) -> int:
    """Tokens a selector keeps at ``retention`` of an ``n``-token context: ``ceil(retention * n)``, at least one.

    Rounding up never under-sizes a transfer for a selector that rounds down or to the nearest; the 1e-9
    absorbs binary round-off (0.75 * 1024 is 768, not 768.0000000001).
    """
    if context_tokens < 0:
        raise ValueError(f"context_tokens must be >= 0, got {context_tokens}")
    if not 0 < retention <= 1:
        raise ValueError(f"retention must be in (0, 1], got {retention}")
    if context_tokens == 0:
        return 0
    return min(context_tokens, max(1, math.ceil(retention * context_tokens - 1e-9)))


class SizeModel(BaseModel):
    """Bytes a message carries as a function of the context length (the closed form in the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size_basis: Literal["kept", "context"] = "kept"
    bytes_per_context_token: float = Field(default=0.0, ge=0)
    fixed_bytes: int = Field(default=0, ge=0)
    bytes_per_token_group: int = Field(default=0, ge=0)
    token_group: int = Field(default=1, ge=1)

    def size_bytes(self, context_tokens: int, retention: float = 1.0, extra_tokens: int = 0) -> int:
        """Bytes on the uplink for an ``n``-token context at ``retention``.

        ``extra_tokens``: the cache's tokens outside the context (prompt minus its last token minus the
        context), carried in full by KV modes beside the kept context; position sets and text ignore them.
        """
        if extra_tokens < 0:
            raise ValueError(f"extra_tokens must be >= 0, got {extra_tokens}")
        if self.size_basis == "kept":
            s = kept_tokens(context_tokens, retention) + int(extra_tokens)
        else:
            s = int(context_tokens)
        if s < 0:
            raise ValueError(f"context_tokens must be >= 0, got {context_tokens}")
        per_token = math.ceil(self.bytes_per_context_token * s - 1e-9) if s else 0
        groups = -(-s // self.token_group)
        return int(self.fixed_bytes + per_token + self.bytes_per_token_group * groups)

    def size_fields(self) -> dict[str, Any]:
        """The size fields alone, to build an `OperatingPoint` from a measured quality."""
        return {name: getattr(self, name) for name in SizeModel.model_fields}


class OperatingPoint(SizeModel):
    """One measured way to answer: mode, retention, bit plan, its size model, and its quality with a CI.

    ``plan`` names the bit plan or payload (``bf16``, ``int8``, ``int4``, ``mixed:0=16``, ``positions``,
    ``none``). ``quality_*`` are in the table's metric; ``n`` is the number of examples behind them; ``source``
    names the measurement (run folder and condition) so that every number of a table can be traced back.
    """

    mode: str = Field(min_length=1)
    retention: float = Field(default=1.0, gt=0, le=1)
    plan: str = ""
    quality_mean: float
    quality_lo: float
    quality_hi: float
    n: int = Field(ge=0)
    model_pair: str = Field(min_length=1)
    notes: str = ""
    source: str = ""

    @model_validator(mode="after")
    def _check_ci(self) -> OperatingPoint:
        if not self.quality_lo <= self.quality_mean <= self.quality_hi:
            raise ValueError(
                f"{self.name}: need quality_lo <= quality_mean <= quality_hi, got "
                f"{self.quality_lo} / {self.quality_mean} / {self.quality_hi}"
            )
        return self

    @property
    def name(self) -> str:
        """``int8`` at full retention, ``int8@0.5`` otherwise: how plans, reports and the CLI name a point."""
        return self.mode if self.retention == 1.0 else f"{self.mode}@{self.retention:g}"

    @property
    def size(self) -> SizeModel:
        return SizeModel(**self.size_fields())

    def bytes_for(self, context_tokens: int, extra_tokens: int = 0) -> int:
        """Uplink bytes of this point for an ``n``-token context (``extra_tokens``: see `SizeModel.size_bytes`)."""
        return self.size_bytes(context_tokens, self.retention, extra_tokens)

    @classmethod
    def from_size(cls, size: SizeModel, **fields: Any) -> OperatingPoint:
        """Combine a codec-built size model with measured fields (mode, quality, n, model pair, ...)."""
        return cls(**size.size_fields(), **fields)


class MeasuredQuality(BaseModel):
    """A measured quality with its CI and provenance: what a table's reference for a model pair rests on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mean: float
    lo: float
    hi: float
    n: int = Field(ge=0)
    source: str = ""
    notes: str = ""

    @model_validator(mode="after")
    def _check_ci(self) -> MeasuredQuality:
        if not self.lo <= self.mean <= self.hi:
            raise ValueError(f"need lo <= mean <= hi, got {self.lo} / {self.mean} / {self.hi}")
        return self


class OperatingPointTable(JsonDocument):
    """All operating points of one evaluation run, for one or more model pairs; saved and loaded as JSON
    (`JsonDocument.load` / `save`).

    ``reference`` maps a model pair to the quality that relative quality divides by. A pair without an entry
    uses its ``full`` point at retention 1; without either, relative quality is undefined and raises.
    ``reference_detail`` (optional) says where a pair's reference comes from (CI, n, run); when given, its mean
    must be the ``reference`` value.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    metric: str = "f1"
    source: str = ""
    reference: dict[str, float] = Field(default_factory=dict)
    reference_detail: dict[str, MeasuredQuality] = Field(default_factory=dict)
    points: list[OperatingPoint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> OperatingPointTable:
        seen: set[tuple[str, str, float]] = set()
        for p in self.points:
            key = (p.model_pair, p.mode, p.retention)
            if key in seen:
                raise ValueError(f"duplicate operating point {p.name} for {p.model_pair}")
            seen.add(key)
        for pair, ref in self.reference.items():
            if not ref > 0:
                raise ValueError(f"reference quality of {pair} must be positive, got {ref}")
        for pair, detail in self.reference_detail.items():
            if pair not in self.reference or not math.isclose(self.reference[pair], detail.mean, rel_tol=1e-12):
                raise ValueError(f"reference_detail of {pair} ({detail.mean}) is not its reference quality")
        return self

    # --- lookup -----------------------------------------------------------------------------------------------
    def pairs(self) -> list[str]:
        return sorted({p.model_pair for p in self.points})

    def resolve_pair(self, model_pair: str | None) -> str:
        """The given pair (checked), or the only pair of the table."""
        pairs = self.pairs()
        if model_pair is None:
            if len(pairs) != 1:
                raise ValueError(f"the table holds {len(pairs)} model pairs ({', '.join(pairs)}); name one")
            return pairs[0]
        if model_pair not in pairs:
            raise ValueError(f"no operating points for model pair {model_pair!r}; the table has {', '.join(pairs)}")
        return model_pair

    def for_pair(self, model_pair: str | None = None) -> list[OperatingPoint]:
        pair = self.resolve_pair(model_pair)
        return [p for p in self.points if p.model_pair == pair]

    def get(self, mode: str, retention: float = 1.0, model_pair: str | None = None) -> OperatingPoint:
        for p in self.for_pair(model_pair):
            if p.mode == mode and math.isclose(p.retention, retention, abs_tol=1e-12):
                return p
        raise KeyError(f"no operating point {mode}@{retention:g} for {self.resolve_pair(model_pair)}")

    def find(self, name: str, model_pair: str | None = None) -> OperatingPoint:
        """A point by its `OperatingPoint.name` (``int8``, ``int8@0.5``)."""
        for p in self.for_pair(model_pair):
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.for_pair(model_pair))
        raise KeyError(f"no operating point named {name!r}; known: {known}")

    def bytes_for(
        self,
        mode: str,
        context_tokens: int,
        retention: float = 1.0,
        model_pair: str | None = None,
        extra_tokens: int = 0,
    ) -> int:
        return self.get(mode, retention, model_pair).bytes_for(context_tokens, extra_tokens)

    def reference_quality(self, model_pair: str | None = None) -> float:
        pair = self.resolve_pair(model_pair)
        if pair in self.reference:
            return self.reference[pair]
        try:
            ref = self.get("full", 1.0, pair).quality_mean
        except KeyError:
            raise ValueError(
                f"no reference quality for {pair}: add it to `reference` or measure a full point"
            ) from None
        if not ref > 0:
            raise ValueError(f"the full point of {pair} has quality {ref}; relative quality is undefined")
        return ref

    def relative_quality(self, point: OperatingPoint) -> float:
        return point.quality_mean / self.reference_quality(point.model_pair)


# ----------------------------------------------------------------------------------------------------------------
# sizes from the real codec
# ----------------------------------------------------------------------------------------------------------------
class KVGeometry(BaseModel):
    """The KV shape that sizes depend on (a `scout.models.ModelSpec` provides it: `from_spec`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_layers: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    v_head_dim: int | None = Field(default=None, gt=0)
    raw_itemsize: int = Field(default=2, description="bytes per element of 16-bit (raw) layers: 2, or 4 for fp32")

    @classmethod
    def from_spec(cls, spec: Any) -> KVGeometry:
        """From anything ModelSpec-like: ``num_layers``, ``num_kv_heads``, ``head_dim``, ``bytes_per_element``."""
        return cls(
            num_layers=int(spec.num_layers),
            kv_heads=int(spec.num_kv_heads),
            head_dim=int(spec.head_dim),
            raw_itemsize=int(getattr(spec, "bytes_per_element", 2)),
        )


def _check_lengths(group: int) -> list[int]:
    """Context lengths at which a fitted closed form is compared with the codec: every length up to three
    groups (all residues of the ceil), then lengths typical of documents and a few awkward ones."""
    return sorted({*range(1, 3 * group + 2), 127, 1000, 1023, 1024, 1025, 4096, 4099, 10_000, 32_768})


def kv_size_model(
    geometry: KVGeometry,
    plan: Any,
    quant: Any = None,
    *,
    header_bytes: int = 0,
    positions_itemsize: int = POSITIONS_ITEMSIZE,
) -> SizeModel:
    """Size model of a KV blob at a bit plan: the codec's exact payload plus the positions tensor plus a header.

    ``plan`` is a `scout.codec.quant.BitPlan` or one bit width (16 = raw bf16); ``quant`` a `QuantSpec` (axes,
    group size, symmetry; KIVI defaults when None). The payload comes from `estimate_bytes`, the function the
    codec's own tests hold equal to ``quantize_cache(...).nbytes()``. ``header_bytes`` is the blob's JSON
    header (`scout.codec.wire`), which this arithmetic does not model: pass a measured one to include it.
    Imports torch (through the codec) only here, so the planner itself stays numpy-only.
    """
    from scout.codec.quant import BitPlan, QuantSpec, estimate_bytes

    bit_plan = plan if isinstance(plan, BitPlan) else BitPlan.uniform(int(plan))
    spec = quant if quant is not None else QuantSpec(bit_plan.default)
    g = geometry

    def exact(seq: int) -> int:
        payload = estimate_bytes(
            g.num_layers,
            g.kv_heads,
            seq,
            g.head_dim,
            bit_plan,
            spec,
            raw_itemsize=g.raw_itemsize,
            v_head_dim=g.v_head_dim,
        )
        return payload + positions_itemsize * seq + header_bytes

    quantized = [b for b in bit_plan.per_layer(g.num_layers) if b != 16]
    channel_axis = bool(quantized) and "channel" in (spec.axis_k, spec.axis_v)
    group = spec.group_size if channel_axis and spec.group_size > 1 else 1
    f1 = exact(1)
    if group == 1:
        per_token, per_group = f1 - header_bytes, 0
    else:
        span = exact(group) - f1
        if span % (group - 1):
            raise ValueError(f"KV size of this geometry is not linear in whole bytes per token (plan {bit_plan})")
        per_token = span // (group - 1)
        per_group = f1 - header_bytes - per_token
    model = SizeModel(
        size_basis="kept",
        bytes_per_context_token=float(per_token),
        fixed_bytes=header_bytes,
        bytes_per_token_group=per_group,
        token_group=group,
    )
    for seq in _check_lengths(group):
        if model.size_bytes(seq) != exact(seq):
            raise ValueError(
                f"the closed-form size disagrees with the codec at {seq} tokens ({model.size_bytes(seq)} vs "
                f"{exact(seq)}); this geometry packs codes unevenly, size it with estimate_bytes directly"
            )
    return model


def positions_size_model(message_bytes: int = 0) -> SizeModel:
    """Size bound of a scout-mode message: the position set's bitmap (``ceil(n/8)`` + 1 tag byte) plus the rest.

    `scout.positions.encode_positions` picks the smallest of its codecs, so it never exceeds the bitmap; the
    bound is checked here against `encoded_size` so that a change of the wire format cannot silently outgrow
    it. ``message_bytes`` is everything else in the message (question, document reference, envelope): pass
    the measured size of the decode message without its position set.
    """
    import numpy as np

    from scout.positions import CHECK_BYTES, encoded_size

    model = SizeModel(size_basis="context", bytes_per_context_token=0.125, fixed_bytes=1 + CHECK_BYTES + message_bytes)
    for n in (1, 7, 8, 9, 1000, 1024, 4099):
        bitmap = encoded_size(np.arange(0, n, 2), n)["bitmap"]
        if model.size_bytes(n) - message_bytes != bitmap:
            raise ValueError(f"position-set bitmap of n={n} is {bitmap} bytes, the size model says otherwise")
    return model


def message_size_model(message_bytes: int = 0) -> SizeModel:
    """Text mode (question + document reference) and local mode (``message_bytes=0``): no per-token bytes."""
    return SizeModel(size_basis="context", fixed_bytes=message_bytes)


def codec_size_models(
    geometry: KVGeometry,
    *,
    mixed_overrides: dict[int, int] | None = None,
    quant: Any = None,
    header_bytes: int = 0,
    message_bytes: int = 0,
) -> dict[str, tuple[str, SizeModel]]:
    """Size models of every standard mode for one edge model: ``mode -> (plan name, size model)``.

    ``full`` is raw 16-bit, ``int8``/``int4`` uniform; ``mixed`` (INT4 with the bottleneck layers kept at
    higher precision) only when ``mixed_overrides`` names those layers (they are calibrated per model, not
    assumed). ``quant`` overrides the KIVI defaults for the quantized modes (its ``bits`` is ignored).
    """
    from scout.codec.quant import BitPlan, QuantSpec
    from scout.codec.registry import bit_plan_spec

    def spec_for(bits: int) -> Any:
        if quant is None:
            return QuantSpec(bits)
        return QuantSpec(bits, quant.axis_k, quant.axis_v, quant.group_size, quant.symmetric)

    out: dict[str, tuple[str, SizeModel]] = {
        "full": (
            "bf16" if geometry.raw_itemsize == 2 else "raw",
            kv_size_model(geometry, 16, header_bytes=header_bytes),
        ),
        "int8": ("int8", kv_size_model(geometry, 8, spec_for(8), header_bytes=header_bytes)),
        "int4": ("int4", kv_size_model(geometry, 4, spec_for(4), header_bytes=header_bytes)),
    }
    if mixed_overrides:
        plan = BitPlan(4, dict(mixed_overrides))
        out["mixed"] = (bit_plan_spec(plan), kv_size_model(geometry, plan, spec_for(4), header_bytes=header_bytes))
    out["scout"] = ("positions", positions_size_model(message_bytes))
    out["text"] = ("none", message_size_model(message_bytes))
    out["local"] = ("none", message_size_model(0))
    return out
