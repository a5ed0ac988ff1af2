"""``bf16``: the cache as full mode sends it, every layer's raw tensors in the checked blob.

The reference every other codec is measured against. It sends the cache in whatever dtype it holds: the pipeline
and the eval hand it the bf16 hand-off cache, so a raw layer weighs 2 bytes per element (4 for an fp32 cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from scout.codec.base import Codec, Geometry, plan_bytes
from scout.codec.quant import BitPlan, QuantizedCache, quantize_cache
from scout.kvcache import KVCache


@dataclass(frozen=True)
class Bf16Codec(Codec):
    """Every layer raw (16 bits in the bit-plan sense): lossless, the largest payload."""

    family: ClassVar[str] = "bf16"

    @property
    def spec(self) -> str:
        return "bf16"

    @property
    def bit_plan(self) -> BitPlan:
        return BitPlan.uniform(16)

    @property
    def axes(self) -> str:
        return "kivi"

    def encode(self, kv: KVCache) -> QuantizedCache:
        return quantize_cache(kv, 16)

    def size_bytes(self, geometry: Geometry, seq: int) -> int:
        return plan_bytes(geometry, seq, 16)
