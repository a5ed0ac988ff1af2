"""Codec conditions of the eval runs as planner modes, and what each one costs on the wire.

The experiments name KV codecs by `scout.codec.registry` spec strings (``bf16``, ``int<b>[-token|-study][:keep=L,…]``,
``mixed[-token|-study]:L=B,…``, ``mixed@<plan.json>`` or the committed reports' ``mixed:<plan.json>`` …), parsed
there and nowhere else (`get_codec`); the planner names modes (``full``, ``int8``, ``mixed`` …) and needs a size
model per mode. This module is the translation, used by the operating-point tables (`scout_eval.op_tables`) and by
the stage benchmarks; sizes come from the codec's own size models plus the blob header measured through the real
wire format, so a table's bytes are the bytes the pipeline sends.

The registry (and with it torch) is imported on first use: the table and report modules that import this one stay
light to import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scout.policy.operating_points import KVGeometry, SizeModel, kv_size_model

if TYPE_CHECKING:
    from scout.codec.base import Codec
    from scout.codec.mixed import MixedCodec, PlanFileCodec
    from scout.codec.quant import BitPlan, QuantSpec
    from scout.codec.raw import Bf16Codec
    from scout.codec.uniform import QuantCodec

    TransportCodec = Bf16Codec | QuantCodec | MixedCodec | PlanFileCodec

HEADER_PROBE_TOKENS = 1024
"""Context length at which the blob header is measured (its JSON grows by a few digits with the length)."""


@dataclass(frozen=True)
class CodecMode:
    """A codec condition as a planner mode: the condition as the run named it, its mode name, the bit-plan name the
    table carries, and the codec the registry parsed it to (what sizes it)."""

    codec: str
    mode: str
    plan_name: str
    parsed: TransportCodec

    @property
    def axes(self) -> str:
        """The spec suffix of the quantizer axes: ``""`` (KIVI, and a plan file, whose quantizer is in the file),
        ``-token`` or ``-study``."""
        from scout.codec.base import AXES
        from scout.codec.mixed import PlanFileCodec

        return "" if isinstance(self.parsed, PlanFileCodec) else AXES[self.parsed.axes]

    @property
    def plan_file(self) -> str:
        """The calibrated plan file of a plan-file mode, else ``""``."""
        from scout.codec.mixed import PlanFileCodec

        return self.parsed.path if isinstance(self.parsed, PlanFileCodec) else ""

    @property
    def overrides(self) -> dict[int, int]:
        """Layers away from the plan's default width, with their bits (a plan file's are read from the file)."""
        return dict(self.bit_plan().overrides)

    def quant_spec(self, head_dim: int) -> QuantSpec:
        """The codec's quantizer: a plan file's own, else the spec's axes at the codec's width."""
        from scout.codec.base import quant_spec
        from scout.codec.mixed import PlanFileCodec
        from scout.codec.raw import Bf16Codec

        c = self.parsed
        if isinstance(c, PlanFileCodec):
            return c.mixed_plan.spec
        if isinstance(c, Bf16Codec):
            return quant_spec(16, c.axes, head_dim)
        return c.quant_spec(head_dim)

    def bit_plan(self) -> BitPlan:
        return self.parsed.bit_plan


def _parsed(codec: str) -> Codec | None:
    """The registry's codec for a condition name, or None for a name that is no codec (``full``, ``q2c@0.5`` …)."""
    from scout.codec.registry import CodecSpecError, get_codec

    try:
        return get_codec(codec)
    except CodecSpecError:
        return None


def plan_file_of(codec: str) -> str | None:
    """The plan file a codec condition names (``mixed@<plan.json>``, or the committed reports' ``mixed:<plan.json>``),
    or None for any other condition."""
    from scout.codec.mixed import PlanFileCodec

    c = _parsed(codec)
    return c.path if isinstance(c, PlanFileCodec) else None


def parse_codec(codec: str) -> CodecMode | None:
    """The planner mode of a codec condition, or None for one that is not a transport mode (``delta-…``, ``…+zstd``,
    or no codec at all).

    ``bf16`` -> ``full``; ``int8``/``int4``/``int2`` keep their names; ``int4:keep=0`` (KIVI INT4 with layer 0 at
    16 bits) and the layer map ``mixed:0=16`` -> ``mixed`` with plan ``mixed:0=16`` (the pipeline's name for it);
    the study's quantizer and per-token keys keep a suffix (``int4-study``, ``mixed-study``, ``int4-token`` …)
    because they are other codecs with other sizes; a plan file ``mixed@<dir>/<name>.json`` (either spelling) ->
    ``mixed-<name>``, its plan name the condition as written. `codec_modes` resolves clashes between several codecs
    that would share a mode name.
    """
    from scout.codec.base import AXES
    from scout.codec.mixed import MixedCodec, PlanFileCodec
    from scout.codec.raw import Bf16Codec
    from scout.codec.uniform import QuantCodec

    c = _parsed(codec)
    if isinstance(c, Bf16Codec):
        return CodecMode(codec, "full", c.spec, c)
    if isinstance(c, PlanFileCodec):
        return CodecMode(codec, f"mixed-{Path(c.path).stem}", codec, c)
    if isinstance(c, QuantCodec) and (not c.keep or c.bits != MixedCodec.default_bits):
        return CodecMode(codec, codec, codec, c)
    if isinstance(c, QuantCodec | MixedCodec):  # a 4-bit plan with layers kept: the layer map names it
        return CodecMode(codec, f"mixed{AXES[c.axes]}", MixedCodec.of(c.bit_plan, c.axes).spec, c)
    return None


def codec_modes(codecs: Iterable[str]) -> dict[str, CodecMode]:
    """`parse_codec` over a set of codecs, with unique mode names: when two codecs would share an alias (e.g.
    ``int4:keep=0`` and ``int4:keep=0,5`` both ``mixed``), each keeps its full codec name as its mode."""
    parsed = {c: cm for c in dict.fromkeys(codecs) if (cm := parse_codec(c)) is not None}
    counts: dict[str, int] = {}
    for cm in parsed.values():
        counts[cm.mode] = counts.get(cm.mode, 0) + 1
    return {c: cm if counts[cm.mode] == 1 else replace(cm, mode=cm.codec) for c, cm in parsed.items()}


def _synthetic_cache(geometry: KVGeometry, seq: int) -> Any:
    import torch

    from scout.kvcache import KVCache

    g = torch.Generator().manual_seed(0)
    v_dim = geometry.v_head_dim or geometry.head_dim
    dtype = torch.bfloat16 if geometry.raw_itemsize == 2 else torch.float32
    layers, heads = range(geometry.num_layers), geometry.kv_heads
    keys = [torch.randn(heads, seq, geometry.head_dim, generator=g).to(dtype) for _ in layers]
    values = [torch.randn(heads, seq, v_dim, generator=g).to(dtype) for _ in layers]
    return KVCache(keys=keys, values=values, positions=torch.arange(seq))


def kv_point_size(geometry: KVGeometry, cm: CodecMode, *, fingerprint: str = "0" * 16) -> SizeModel:
    """Size model of a KV codec for one edge geometry: `kv_size_model` (payload + positions tensor) plus the blob
    header, measured by encoding a synthetic `HEADER_PROBE_TOKENS`-token cache through `encode_blob` exactly as
    `scout.pipeline.encode_uplink` does (same metadata key)."""
    from scout.codec.quant import quantize_cache
    from scout.codec.wire import encode_blob

    plan, spec = cm.bit_plan(), cm.quant_spec(geometry.head_dim)
    bare = kv_size_model(geometry, plan, spec)
    n = HEADER_PROBE_TOKENS
    qc = quantize_cache(_synthetic_cache(geometry, n), plan, spec)
    blob = encode_blob(qc, model_fingerprint=fingerprint, original_seq_len=n, meta={"bit_plan": cm.plan_name})
    header = len(blob) - bare.size_bytes(n)
    if header < 0:
        raise ValueError(f"{cm.codec}: the blob is smaller than its size model ({len(blob)} B)")
    return kv_size_model(geometry, plan, spec, header_bytes=header)


def geometry_of_model(name: str) -> KVGeometry:
    """KV geometry of a model from its spec (no weights loaded), at the wire's 16 bits per raw element.

    Never prepares a model (that rebuilds weights, minutes of CPU): an alias that is not prepared raises
    `scout.models.ModelNotAvailable`."""
    from scout.models import load_spec, resolve

    resolve(name, prepare_if_needed=False)
    spec = load_spec(name)
    return KVGeometry(num_layers=spec.num_layers, kv_heads=spec.num_kv_heads, head_dim=spec.head_dim)
