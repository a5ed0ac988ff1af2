"""Per-layer precision plans ("mixed INT4"): the plan file, and the two mixed codecs that execute a plan.

Why: the source study found that Qwen2.5-7B's INT4 loss came almost entirely from one layer (layer 0), and that
keeping that layer at 16 bits recovered most of the quality for about 4 % more bytes. Which layers are fragile is
a property of the model *and* of the quantizer, so Scout measures it (`scout.codec.calibrate`) and saves the
result as a plan file. Two codecs carry a plan, with two spellings so a spec never means two things:

* ``mixed[-token|-study]:<layer>=<bits>,…`` (`MixedCodec`): a layer map written out, 4 bits by default, e.g.
  ``mixed:0=16`` (the study's rule, the pipeline's default mixed plan) — the name a transport plan carries;
* ``mixed@<plan.json>`` (`PlanFileCodec`): a calibrated plan file, with its own quantizer, checked against the
  model's fingerprint. (``mixed:<plan.json>``, the eval's older spelling, still parses to it.)

A plan is saved as JSON with the model fingerprint and the calibration evidence; a plan made for another model
is refused on load (`PlanFingerprintError`), because layer indices mean nothing across models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from scout.codec.base import AXES, Codec, CodecSpecError, Geometry, check_axes, head_dim_of, plan_bytes, quant_spec
from scout.codec.quant import (
    BitPlan,
    QuantizedCache,
    QuantSpec,
    quantize_cache,
    study_spec,
)
from scout.codec.wire import MAX_LAYERS
from scout.kvcache import KVCache

__all__ = [
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "MixedCodec",
    "MixedPlan",
    "PlanFileCodec",
    "PlanFingerprintError",
    "PlanFormatError",
    "spec_from_json",
    "spec_to_json",
    "study_spec",
    "with_bits",
]

PLAN_FORMAT = "scout-bitplan"
PLAN_VERSION = 1
MAX_PLAN_BYTES = 16 * 1024 * 1024
"""Largest plan file read (calibration evidence included; real plans are tens of KB)."""
MAX_PLAN_LAYERS = MAX_LAYERS
"""A plan may claim no more layers than a blob may carry: checked before any per-layer list is built, because a
300-byte plan claiming 10**8 layers took 10 s and 1 GB to reject (issue 22)."""
_LAYER_KEY_RE = re.compile(r"0|[1-9][0-9]{0,5}")


class PlanFormatError(ValueError):
    """A plan file is not a valid scout-bitplan document."""


class PlanFingerprintError(PlanFormatError):
    """A plan was calibrated for a different model than the one it is being used with."""


# ----------------------------------------------------------------------------------------------------------------
# plans
# ----------------------------------------------------------------------------------------------------------------
def spec_to_json(spec: QuantSpec) -> dict[str, Any]:
    return {
        "bits": spec.bits,
        "axis_k": spec.axis_k,
        "axis_v": spec.axis_v,
        "group_size": spec.group_size,
        "symmetric": spec.symmetric,
    }


def spec_from_json(obj: Any) -> QuantSpec:
    if not isinstance(obj, dict) or set(obj) != {"bits", "axis_k", "axis_v", "group_size", "symmetric"}:
        raise PlanFormatError("quant: expected keys bits, axis_k, axis_v, group_size, symmetric")
    try:
        return QuantSpec(**obj)
    except (TypeError, ValueError) as e:
        raise PlanFormatError(f"quant: {e}") from None


@dataclass(frozen=True)
class MixedPlan:
    """A bit plan bound to the model it was made for, the quantizer it was calibrated with, and its evidence.

    `spec` carries the axes, group size and symmetry; its `bits` is set to the plan's default width. `evidence` is
    the calibration record (per-layer table, protection curve, targets) so that a plan file explains itself.
    """

    plan: BitPlan
    spec: QuantSpec
    model_fingerprint: str
    num_layers: int
    model_name: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model_fingerprint, str) or not self.model_fingerprint:
            raise ValueError("MixedPlan: model_fingerprint must be a non-empty string")
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ValueError(f"MixedPlan: num_layers must be a positive int, got {self.num_layers!r}")
        self.plan.validate(self.num_layers)
        if self.spec.bits != self.plan.default:
            object.__setattr__(self, "spec", with_bits(self.spec, self.plan.default))

    @property
    def per_layer(self) -> list[int]:
        return self.plan.per_layer(self.num_layers)

    @property
    def protected(self) -> list[int]:
        """Layers kept at more bits than the plan's default."""
        return sorted(layer for layer, bits in self.plan.overrides.items() if bits > self.plan.default)

    def check_model(self, fingerprint: str) -> None:
        if fingerprint != self.model_fingerprint:
            raise PlanFingerprintError(
                f"plan is for model {self.model_fingerprint} ({self.model_name or 'unnamed'}), not {fingerprint}"
            )

    def quantize(self, kv: KVCache) -> QuantizedCache:
        """Quantize a cache with this plan (the layer count must match the plan's model)."""
        if kv.num_layers != self.num_layers:
            raise ValueError(f"plan has {self.num_layers} layers, cache has {kv.num_layers}")
        return quantize_cache(kv, self.plan, self.spec)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": {"fingerprint": self.model_fingerprint, "name": self.model_name, "num_layers": self.num_layers},
            "plan": {
                "default": self.plan.default,
                "overrides": {str(k): v for k, v in sorted(self.plan.overrides.items())},
                "per_layer": self.per_layer,
            },
            "quant": spec_to_json(self.spec),
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_json(cls, obj: Any, *, expected_fingerprint: str | None) -> MixedPlan:
        """Parse and validate a plan document; `expected_fingerprint=None` only to inspect a plan offline."""
        if not isinstance(obj, dict):
            raise PlanFormatError("plan document must be a JSON object")
        if obj.get("format") != PLAN_FORMAT:
            raise PlanFormatError(f"not a {PLAN_FORMAT} document (format {str(obj.get('format'))[:40]!r})")
        version = obj.get("version")
        if type(version) is not int or version != PLAN_VERSION:
            raise PlanFormatError(f"unsupported plan version {str(version)[:20]!r}; this reader knows {PLAN_VERSION}")
        model, plan, quant = obj.get("model"), obj.get("plan"), obj.get("quant")
        if not isinstance(model, dict) or not isinstance(model.get("fingerprint"), str):
            raise PlanFormatError("model.fingerprint missing")
        if expected_fingerprint is not None and model["fingerprint"] != expected_fingerprint:
            raise PlanFingerprintError(
                f"plan is for model {model['fingerprint']} ({model.get('name') or 'unnamed'}), "
                f"not {expected_fingerprint}"
            )
        num_layers = model.get("num_layers")
        if type(num_layers) is not int or not 1 <= num_layers <= MAX_PLAN_LAYERS:
            raise PlanFormatError(f"model.num_layers must be an integer in [1, {MAX_PLAN_LAYERS}]")
        if not isinstance(model.get("name", ""), str):
            raise PlanFormatError("model.name must be a string")
        if not isinstance(plan, dict) or set(plan) != {"default", "overrides", "per_layer"}:
            raise PlanFormatError("plan: expected keys default, overrides, per_layer")
        overrides = plan["overrides"]
        if not isinstance(overrides, dict) or not all(_LAYER_KEY_RE.fullmatch(k) for k in overrides):
            raise PlanFormatError("plan.overrides must map layer numbers (strings of digits) to bits")
        if len(overrides) > num_layers:
            raise PlanFormatError(f"plan.overrides names {len(overrides)} layers of {num_layers}")
        try:
            bitplan = BitPlan(plan["default"], {int(k): v for k, v in overrides.items()})
            per_layer = bitplan.per_layer(num_layers)
        except ValueError as e:
            raise PlanFormatError(f"plan: {e}") from None
        if plan["per_layer"] != per_layer:
            raise PlanFormatError("plan.per_layer disagrees with default + overrides")
        evidence = obj.get("evidence", {})
        if not isinstance(evidence, dict):
            raise PlanFormatError("evidence must be a JSON object")
        try:
            return cls(
                plan=bitplan,
                spec=spec_from_json(quant),
                model_fingerprint=model["fingerprint"],
                num_layers=num_layers,
                model_name=model.get("name") or "",
                evidence=evidence,
            )
        except PlanFormatError:
            raise
        except ValueError as e:  # MixedPlan's own checks (an empty fingerprint)
            raise PlanFormatError(str(e)) from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, *, expected_fingerprint: str | None) -> MixedPlan:
        """Read a plan file. A plan for another model fingerprint raises PlanFingerprintError.

        `expected_fingerprint` is required on purpose: pass the model's `spec.fingerprint`, or None explicitly
        to inspect a file without a model.
        """
        path = Path(path)
        with path.open("rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)
        try:
            return cls.loads(data, expected_fingerprint=expected_fingerprint)
        except PlanFingerprintError:
            raise
        except PlanFormatError as e:
            raise PlanFormatError(f"{path}: {e}") from None

    @classmethod
    def loads(cls, data: bytes | str, *, expected_fingerprint: str | None) -> MixedPlan:
        """Parse a plan document from its bytes; every failure is a PlanFormatError (or PlanFingerprintError).

        Hostile files are expected (a plan is a path on a command line or in a config): the size is checked
        before parsing, and bad UTF-8, nesting too deep for the parser and integers too long to convert are
        PlanFormatErrors, not the UnicodeDecodeError / RecursionError / ValueError that json raises (issue 22).
        """
        if not isinstance(data, bytes | str):
            raise PlanFormatError(f"a plan document is bytes or text, got {type(data).__name__}")
        if len(data) > MAX_PLAN_BYTES:
            raise PlanFormatError(f"plan document exceeds {MAX_PLAN_BYTES} bytes")
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanFormatError(f"not JSON ({e.msg})") from None
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError, the int-digit limit, deep nesting
            raise PlanFormatError(f"not a readable JSON document ({type(e).__name__})") from None
        return cls.from_json(obj, expected_fingerprint=expected_fingerprint)


def with_bits(spec: QuantSpec, bits: int) -> QuantSpec:
    """The same quantizer (axes, group, symmetry) at another width."""
    return QuantSpec(bits, spec.axis_k, spec.axis_v, spec.group_size, spec.symmetric)


# ----------------------------------------------------------------------------------------------------------------
# codecs
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MixedCodec(Codec):
    """``mixed[-token|-study]:L=B,…``: every layer at 4 bits except the listed layers at theirs (2, 8 or 16)."""

    family: ClassVar[str] = "mixed"
    default_bits: ClassVar[int] = 4
    overrides: tuple[tuple[int, int], ...] = ()
    axes: str = "kivi"

    def __post_init__(self) -> None:
        check_axes(self.axes)
        layers = [layer for layer, _ in self.overrides]
        if len(set(layers)) != len(layers):
            raise CodecSpecError(f"a mixed plan names a layer twice: {layers}")
        try:
            BitPlan(self.default_bits, dict(self.overrides))
        except ValueError as e:
            raise CodecSpecError(str(e)) from None
        object.__setattr__(self, "overrides", tuple(sorted(self.overrides)))

    @classmethod
    def of(cls, plan: BitPlan, axes: str = "kivi") -> MixedCodec:
        """The codec of a 4-bit-default plan (the only default a layer map spells)."""
        if plan.default != cls.default_bits:
            raise CodecSpecError(f"a mixed layer map defaults to {cls.default_bits} bits, not {plan.default}")
        return cls(tuple(plan.overrides.items()), axes)

    @property
    def spec(self) -> str:
        return f"mixed{AXES[self.axes]}:" + ",".join(f"{layer}={bits}" for layer, bits in self.overrides)

    @property
    def bit_plan(self) -> BitPlan:
        return BitPlan(self.default_bits, dict(self.overrides))

    def quant_spec(self, head_dim: int) -> QuantSpec:
        return quant_spec(self.default_bits, self.axes, head_dim)

    def encode(self, kv: KVCache) -> QuantizedCache:
        return quantize_cache(kv, self.bit_plan, self.quant_spec(head_dim_of(kv)))

    def size_bytes(self, geometry: Geometry, seq: int) -> int:
        return plan_bytes(geometry, seq, self.bit_plan, self.quant_spec(geometry.head_dim))


@dataclass(frozen=True)
class PlanFileCodec(Codec):
    """``mixed@<plan.json>``: a calibrated plan (bits per layer and its quantizer), loaded on first use."""

    family: ClassVar[str] = "mixed-plan"
    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.strip() or any(ch in self.path for ch in "\n\r\0"):
            raise CodecSpecError(f"a plan file codec needs a file path, got {self.path!r}")

    @property
    def spec(self) -> str:
        return f"mixed@{self.path}"

    @cached_property
    def mixed_plan(self) -> MixedPlan:
        """The plan file's content (read once; `check_model` binds it to a model)."""
        return MixedPlan.load(self.path, expected_fingerprint=None)

    @property
    def bit_plan(self) -> BitPlan:
        return self.mixed_plan.plan

    def check_model(self, fingerprint: str) -> None:
        self.mixed_plan.check_model(fingerprint)

    def encode(self, kv: KVCache) -> QuantizedCache:
        return self.mixed_plan.quantize(kv)

    def size_bytes(self, geometry: Geometry, seq: int) -> int:
        plan = self.mixed_plan
        if geometry.num_layers != plan.num_layers:
            raise ValueError(f"plan has {plan.num_layers} layers, the geometry {geometry.num_layers}")
        return plan_bytes(geometry, seq, plan.plan, plan.spec)
