"""KVCache: validation, selection keeps original positions, and the bridge to transformers caches."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_qwen2

from scout.kvcache import KVCache


def _random_cache(layers: int = 3, heads: int = 2, seq: int = 10, dim: int = 8) -> KVCache:
    g = torch.Generator().manual_seed(0)
    return KVCache(
        keys=[torch.randn(heads, seq, dim, generator=g) for _ in range(layers)],
        values=[torch.randn(heads, seq, dim, generator=g) for _ in range(layers)],
        positions=torch.arange(seq),
    )


def test_geometry_and_bytes() -> None:
    kv = _random_cache()
    assert kv.num_layers == 3 and kv.seq_len == 10 and kv.next_position == 10
    assert kv.nbytes() == 2 * 3 * 2 * 10 * 8 * 4
    assert kv.to(dtype=torch.bfloat16).nbytes() == kv.nbytes() // 2


def test_select_keeps_original_positions() -> None:
    kv = _random_cache()
    sub = kv.select([0, 3, 4, 9])
    assert sub.positions.tolist() == [0, 3, 4, 9]
    assert sub.next_position == 10
    assert torch.equal(sub.keys[1][:, 1], kv.keys[1][:, 3])
    assert torch.equal(sub.values[2][:, 3], kv.values[2][:, 9])
    with pytest.raises(IndexError):
        kv.select([0, 10])


def test_validation_rejects_inconsistent_shapes() -> None:
    kv = _random_cache()
    with pytest.raises(ValueError, match="seq"):
        KVCache(keys=kv.keys, values=kv.values, positions=torch.arange(9))
    with pytest.raises(ValueError, match="layers"):
        KVCache(keys=kv.keys, values=kv.values[:2], positions=kv.positions)
    with pytest.raises(ValueError, match="no layers"):
        KVCache(keys=[], values=[], positions=torch.arange(0))


def test_roundtrip_through_transformers_cache_is_bitwise() -> None:
    cfg, model = tiny_qwen2(vocab_size=500)
    ids = torch.randint(0, 500, (1, 12))
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
    kv = KVCache.from_hf(out.past_key_values)
    assert kv.num_layers == 2 and kv.keys[0].shape == (2, 12, 16)
    back = KVCache.from_hf(kv.to_hf(cfg))
    assert back.equal(kv)
    # the rebuilt cache continues generation exactly like the original one
    nxt = torch.tensor([[7]])
    with torch.inference_mode():
        a = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True).logits
        b = model(input_ids=nxt, past_key_values=kv.to_hf(cfg), use_cache=True).logits
    assert torch.equal(a, b)


def test_legacy_tuple_cache_is_accepted() -> None:
    kv = _random_cache(layers=2)
    legacy = tuple((k.unsqueeze(0), v.unsqueeze(0)) for k, v in zip(kv.keys, kv.values, strict=True))
    assert KVCache.from_hf(legacy).equal(kv)
