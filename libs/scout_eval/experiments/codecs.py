"""Named KV codecs for the experiments: a spec string -> (reconstructed cache, bytes on the wire) function.

The names are `scout.codec.registry`'s specs, parsed there and nowhere else (`get_codec`): ``bf16``,
``int<b>[-token|-study][:keep=L,…]`` (``int4-study:keep=0`` is the study's "mixed INT4"), ``mixed:<layer>=<bits>,…``,
``mixed@<plan.json>`` (a calibrated plan from `scout calibrate`, checked against the model's fingerprint; the
older spelling ``mixed:<plan.json>`` of committed reports still reads as it), ``delta-int<b>…`` (CacheGen-style
anchor/delta encoding, then that quantizer). A bad name is a `CodecSpecError` (a ValueError).
Bytes are the codec payload (`Codec.nbytes`), the quantity the study's size columns compare.

Every codec starts from the cache in bf16, what the edge hands off and full mode sends, whatever dtype the model
computes in: a model run in fp32 (much faster on CPUs without bf16 arithmetic) gets its cache rounded to bf16
first, so 16-bit layers of a plan weigh 2 bytes per element and the reference is the real wire format. The
reconstruction is returned in the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from scout.codec.registry import CodecSpecError, get_codec
from scout.kvcache import KVCache

__all__ = ["Codec", "CodecSpecError", "codec"]

Codec = Callable[[KVCache], tuple[KVCache, int]]


def codec(name: str, model_spec: Any) -> Codec:
    """The codec called `name` for a model with `model_spec`'s fingerprint (a plan file must be for that model)."""
    c = get_codec(name)
    c.check_model(model_spec.fingerprint)

    def run(kv: KVCache) -> tuple[KVCache, int]:
        dtype = kv.keys[0].dtype
        rebuilt, nbytes = c.round_trip(kv if dtype == torch.bfloat16 else kv.to(dtype=torch.bfloat16))
        return (rebuilt if rebuilt.keys[0].dtype == dtype else rebuilt.to(dtype=dtype)), nbytes

    return run
