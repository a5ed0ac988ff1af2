"""Named KV codecs for the experiments: a name -> (reconstructed cache, bytes on the wire) function.

Names (`<bits>` in 8, 4, 2):
- `bf16`: the cache as full mode sends it (16-bit);
- `int<bits>`: KIVI axes (keys per channel, values per token), groups of 32, asymmetric — Scout's default;
- `int<bits>-token`: per-token for keys too; `int<bits>-study`: the study's quantizer (per-token symmetric
  absmax over the head dim);
- any of those + `:keep=0,5`: the listed layers kept at 16 bits (e.g. `int4-study:keep=0` is the study's
  "mixed INT4", layer 0 protected);
- `mixed:<plan.json>`: a calibrated plan from `scout calibrate` (checked against the model's fingerprint);
- `delta-<int…>`: CacheGen-style anchor/delta encoding, then that quantizer.
Bytes are the codec payload (`nbytes()`), the quantity the study's size columns compare.

Every codec starts from the cache in bf16, what the edge hands off and full mode sends, whatever dtype the model
computes in: a model run in fp32 (much faster on CPUs without bf16 arithmetic) gets its cache rounded to bf16
first, so 16-bit layers of a plan weigh 2 bytes per element and the reference is the real wire format. The
reconstruction is returned in the model's dtype.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from scout.kvcache import KVCache

Codec = Callable[[KVCache], tuple[KVCache, int]]
_NAME = re.compile(r"^(?P<delta>delta-)?int(?P<bits>[248])(?P<axes>-token|-study)?(?::keep=(?P<keep>[0-9,]+))?$")


def _spec(bits: int, axes: str | None, head_dim: int) -> Any:
    from scout.codec.mixed import study_spec
    from scout.codec.quant import QuantSpec

    if axes == "-study":
        return study_spec(bits, head_dim)
    return QuantSpec(bits, axis_k="token" if axes == "-token" else "channel")


def _from_bf16(inner: Codec) -> Codec:
    """Run ``inner`` on the bf16 hand-off cache; return the reconstruction in the caller's dtype."""
    import torch

    def run(kv: KVCache) -> tuple[KVCache, int]:
        dtype = kv.keys[0].dtype
        rebuilt, nbytes = inner(kv if dtype == torch.bfloat16 else kv.to(dtype=torch.bfloat16))
        return (rebuilt if rebuilt.keys[0].dtype == dtype else rebuilt.to(dtype=dtype)), nbytes

    return run


def codec(name: str, model_spec: Any) -> Codec:
    """The codec called `name` (see the module docstring) for a model with `model_spec` geometry."""
    return _from_bf16(_codec(name, model_spec))


def _codec(name: str, model_spec: Any) -> Codec:
    from scout.codec.quant import BitPlan, dequantize_cache, quantize_cache

    if name == "bf16":
        return lambda kv: (kv, kv.nbytes())
    if name.startswith("mixed:"):
        from scout.codec.mixed import MixedPlan

        mixed = MixedPlan.load(name.split(":", 1)[1], expected_fingerprint=model_spec.fingerprint)

        def run_mixed(kv: KVCache) -> tuple[KVCache, int]:
            qc = mixed.quantize(kv)
            return dequantize_cache(qc), qc.nbytes()

        return run_mixed
    m = _NAME.match(name)
    if not m:
        raise KeyError(f"unknown codec {name!r}: bf16, int<b>[-token|-study][:keep=L,…], delta-int<b>…, mixed:<plan>")
    bits = int(m["bits"])
    spec = _spec(bits, m["axes"], model_spec.head_dim)
    keep = {int(x): 16 for x in m["keep"].split(",") if x} if m["keep"] else {}
    plan = BitPlan(default=bits, overrides=keep)
    if m["delta"]:
        from scout.codec.delta import delta_decode, delta_encode

        if keep:
            raise KeyError("delta codecs take no :keep= list")

        def run_delta(kv: KVCache) -> tuple[KVCache, int]:
            dc = delta_encode(kv, bits=bits, spec=spec)
            return delta_decode(dc), dc.nbytes()

        return run_delta

    def run(kv: KVCache) -> tuple[KVCache, int]:
        qc = quantize_cache(kv, plan, spec)
        return dequantize_cache(qc), qc.nbytes()

    return run
