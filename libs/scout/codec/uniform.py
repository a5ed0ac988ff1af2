"""``int<b>[-token|-study][:keep=L,…]``: every layer quantized at one width, optionally some layers kept raw.

* ``int8`` / ``int4`` / ``int2``: KIVI axes (keys per channel, values per token), groups of 32, asymmetric:
  Scout's default quantizer;
* ``-token``: keys per token too (isolates what the per-channel key axis buys);
* ``-study``: the source study's quantizer, per-token symmetric absmax over the whole head dim;
* ``:keep=0,5``: the listed layers kept at 16 bits (``int4-study:keep=0`` is the study's "mixed INT4").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from scout.codec.base import AXES, Codec, CodecSpecError, Geometry, check_axes, head_dim_of, plan_bytes, quant_spec
from scout.codec.quant import QUANT_BITS, BitPlan, QuantizedCache, QuantSpec, quantize_cache
from scout.kvcache import KVCache


@dataclass(frozen=True)
class QuantCodec(Codec):
    """`bits` everywhere on `axes` ("kivi", "token" or "study"), the layers in `keep` raw."""

    family: ClassVar[str] = "int"
    bits: int
    axes: str = "kivi"
    keep: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.bits not in QUANT_BITS:
            raise CodecSpecError(f"int codecs take {sorted(QUANT_BITS)} bits, got {self.bits!r}")
        check_axes(self.axes)
        keep = tuple(sorted(set(self.keep)))
        if len(keep) != len(self.keep) or any(layer < 0 for layer in keep):
            raise CodecSpecError(f"keep must list distinct non-negative layers, got {self.keep!r}")
        object.__setattr__(self, "keep", keep)

    @property
    def spec(self) -> str:
        keep = f":keep={','.join(map(str, self.keep))}" if self.keep else ""
        return f"int{self.bits}{AXES[self.axes]}{keep}"

    @property
    def bit_plan(self) -> BitPlan:
        return BitPlan(self.bits, {layer: 16 for layer in self.keep})

    def quant_spec(self, head_dim: int) -> QuantSpec:
        return quant_spec(self.bits, self.axes, head_dim)

    def encode(self, kv: KVCache) -> QuantizedCache:
        return quantize_cache(kv, self.bit_plan, self.quant_spec(head_dim_of(kv)))

    def size_bytes(self, geometry: Geometry, seq: int) -> int:
        return plan_bytes(geometry, seq, self.bit_plan, self.quant_spec(geometry.head_dim))
