"""Named KV codecs for the experiments: a name -> (reconstructed cache, bytes on the wire) function.

Names: `bf16` (the cache as is), `int8`/`int4`/`int2` (KIVI axes: keys per channel, values per token, groups of
32, asymmetric), `<bits>-token` (per-token for keys too), `mixed:<plan.json>` (a calibrated per-layer plan).
Bytes are the codec payload (`nbytes()`), the quantity the study's size columns compare.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scout.kvcache import KVCache

Codec = Callable[[KVCache], tuple[KVCache, int]]


def _quantized(bits: int, axis_k: str = "channel") -> Codec:
    from scout.codec.quant import QuantSpec, dequantize_cache, quantize_cache

    spec = QuantSpec(bits, axis_k=axis_k)

    def run(kv: KVCache) -> tuple[KVCache, int]:
        qc = quantize_cache(kv, bits, spec)
        return dequantize_cache(qc), qc.nbytes()

    return run


def _planned(path: str) -> Codec:
    from scout.codec.quant import BitPlan, QuantSpec, dequantize_cache, quantize_cache

    data = __import__("json").loads(Path(path).read_text())
    plan = BitPlan(
        default=int(data["plan"]["default"]),
        overrides={int(k): int(v) for k, v in data["plan"].get("overrides", {}).items()},
    )

    def run(kv: KVCache) -> tuple[KVCache, int]:
        qc = quantize_cache(kv, plan, QuantSpec(plan.default if plan.default != 16 else 8))
        return dequantize_cache(qc), qc.nbytes()

    return run


def codec(name: str) -> Codec:
    """The codec called `name` (see the module docstring)."""
    if name == "bf16":
        return lambda kv: (kv, kv.nbytes())
    if name in ("int8", "int4", "int2"):
        return _quantized(int(name[3:]))
    if name.endswith("-token") and name[:-6] in ("int8", "int4", "int2"):
        return _quantized(int(name[3:-6]), axis_k="token")
    if name.startswith("mixed:"):
        return _planned(name.split(":", 1)[1])
    raise KeyError(f"unknown codec {name!r}: bf16, int8, int4, int2, int<b>-token, mixed:<plan.json>")
