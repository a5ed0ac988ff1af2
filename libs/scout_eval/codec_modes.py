"""Codec conditions of the eval runs as planner modes, and what each one costs on the wire.

The experiments name KV codecs in a small grammar (`scout_eval.experiments.codecs`: ``bf16``,
``int<b>[-token|-study][:keep=L,…]``, ``mixed:<plan.json>``); the planner names modes (``full``, ``int8``,
``mixed`` …) and needs a size model per mode. This module is the translation, used by the operating-point tables
(`scout_eval.op_tables`) and by the stage benchmarks; sizes come from the codec's own size models plus the blob
header measured through the real wire format, so a table's bytes are the bytes the pipeline sends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scout.policy.operating_points import KVGeometry, SizeModel, kv_size_model

HEADER_PROBE_TOKENS = 1024
"""Context length at which the blob header is measured (its JSON grows by a few digits with the length)."""

_CODEC = re.compile(r"^(?P<delta>delta-)?int(?P<bits>[248])(?P<axes>-token|-study)?(?::keep=(?P<keep>[0-9,]+))?$")


@dataclass(frozen=True)
class CodecMode:
    """A codec condition as a planner mode: its mode name, bit-plan name and what sizes it."""

    codec: str
    mode: str
    plan_name: str
    bits: int
    overrides: dict[int, int] = field(default_factory=dict)
    axes: str = ""  # "", "-token" or "-study"
    plan_file: str = ""

    def quant_spec(self, head_dim: int) -> Any:
        """The codec's `QuantSpec` (the experiments' grammar: KIVI by default, per-token keys, or the study's)."""
        from scout.codec.mixed import study_spec
        from scout.codec.quant import QuantSpec

        if self.plan_file:
            from scout.codec.mixed import MixedPlan

            return MixedPlan.load(self.plan_file, expected_fingerprint=None).spec
        if self.axes == "-study":
            return study_spec(self.bits, head_dim)
        return QuantSpec(self.bits, axis_k="token" if self.axes == "-token" else "channel")

    def bit_plan(self) -> Any:
        from scout.codec.quant import BitPlan

        if self.plan_file:
            from scout.codec.mixed import MixedPlan

            return MixedPlan.load(self.plan_file, expected_fingerprint=None).plan
        return BitPlan(self.bits, dict(self.overrides))


def parse_codec(codec: str) -> CodecMode | None:
    """The planner mode of a codec condition, or None for one that is not a transport mode (``delta-…``).

    ``bf16`` -> ``full``; ``int8``/``int4``/``int2`` keep their names; ``int4:keep=0`` (KIVI INT4 with layer 0 at
    16 bits) -> ``mixed`` with plan ``mixed:0=16`` (the pipeline's name for it); the study's quantizer and
    per-token keys keep a suffix (``int4-study``, ``mixed-study``, ``int4-token`` …) because they are other codecs
    with other sizes. `codec_modes` resolves clashes between several codecs that would share a mode name.
    """
    if codec == "bf16":
        return CodecMode(codec, "full", "bf16", 16)
    if codec.startswith("mixed:"):
        path = codec.split(":", 1)[1]
        return CodecMode(codec, f"mixed-{Path(path).stem}", codec, 4, plan_file=path)
    m = _CODEC.match(codec)
    if not m or m["delta"]:
        return None
    bits, axes = int(m["bits"]), m["axes"] or ""
    keep = {int(x): 16 for x in m["keep"].split(",") if x} if m["keep"] else {}
    if not keep:
        return CodecMode(codec, f"int{bits}{axes}", f"int{bits}{axes}", bits, axes=axes)
    overrides = ",".join(f"{k}={v}" for k, v in sorted(keep.items()))
    if bits == 4:
        return CodecMode(codec, f"mixed{axes}", f"mixed{axes}:{overrides}", bits, keep, axes)
    return CodecMode(codec, codec, codec, bits, keep, axes)


def codec_modes(codecs: Iterable[str]) -> dict[str, CodecMode]:
    """`parse_codec` over a set of codecs, with unique mode names: when two codecs would share an alias (e.g.
    ``int4:keep=0`` and ``int4:keep=0,5`` both ``mixed``), each keeps its full codec name as its mode."""
    parsed = {c: cm for c in dict.fromkeys(codecs) if (cm := parse_codec(c)) is not None}
    counts: dict[str, int] = {}
    for cm in parsed.values():
        counts[cm.mode] = counts.get(cm.mode, 0) + 1
    return {
        c: (
            cm
            if counts[cm.mode] == 1
            else CodecMode(cm.codec, cm.codec, cm.plan_name, cm.bits, cm.overrides, cm.axes, cm.plan_file)
        )
        for c, cm in parsed.items()
    }


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
