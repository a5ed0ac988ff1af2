"""Scout's own KV cache value type, and the bridge to and from Hugging Face cache objects.

Every later module (selection, codec, wire format, decoder) speaks `KVCache`, never a transformers cache class:
the transformers cache API changed shape between 4.x (`key_cache`/`value_cache` lists, legacy tuples) and 5.x
(`cache.layers[i].keys`), and a value type of our own keeps that churn in this one file.

Layout (batch size 1, which is what an edge device serves):
    keys[l], values[l]: [kv_heads, seq, head_dim] for layer l
    positions:          [seq] int64, the *original* position id of each cached token (RoPE was applied with it)

`positions` is what makes a pruned cache usable: after dropping context tokens the remaining ones keep the RoPE
phase they were computed with, and generation continues at `next_position` (one past the largest original id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


class LayeredCache:
    """The geometry every per-layer cache of one sequence shares: one entry per layer in ``keys`` and the original
    position id of every cached token in ``positions``. `KVCache` and the codec's quantized cache both read their
    layer count and length this way, so the two can never disagree on what a layer or a token is."""

    keys: Sequence[Any]
    positions: torch.Tensor

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def seq_len(self) -> int:
        return int(self.positions.shape[0])


@dataclass
class KVCache(LayeredCache):
    """Per-layer K and V for one sequence, plus the original position id of every cached token."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    positions: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values):
            raise ValueError(f"KVCache: {len(self.keys)} key layers but {len(self.values)} value layers")
        if not self.keys:
            raise ValueError("KVCache: no layers")
        seq = self.positions.shape[0] if self.positions.ndim == 1 else -1
        if seq < 0:
            raise ValueError(f"KVCache: positions must be 1-D, got shape {tuple(self.positions.shape)}")
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k.ndim != 3 or v.ndim != 3:
                raise ValueError(f"KVCache: layer {i} tensors must be [kv_heads, seq, head_dim]")
            if k.shape[1] != seq or v.shape[1] != seq:
                raise ValueError(f"KVCache: layer {i} has seq {k.shape[1]}/{v.shape[1]} but {seq} positions")
            if k.shape[0] != v.shape[0]:
                raise ValueError(f"KVCache: layer {i} key/value head counts differ")

    # --- geometry (num_layers, seq_len: `LayeredCache`) -----------------------------------------------------
    @property
    def next_position(self) -> int:
        """Position id the next generated/fed token takes: one past the largest original position."""
        return int(self.positions.max().item()) + 1 if self.seq_len else 0

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    def nbytes(self) -> int:
        """Bytes held by the K and V tensors (what a bf16/fp32 `full` transfer carries, before headers)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    # --- transformations ------------------------------------------------------------------------------------
    def select(self, keep: torch.Tensor | Sequence[int]) -> KVCache:
        """Keep only the cached tokens at `keep` (indices into this cache's sequence axis), in that order.

        Original position ids travel with the tokens, so RoPE stays intact: this is physical dropping.
        """
        idx = torch.as_tensor(keep, dtype=torch.long)
        if idx.ndim != 1:
            raise ValueError("keep must be a 1-D index list")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.seq_len):
            raise IndexError(f"keep indices out of range for a cache of {self.seq_len} tokens")
        return KVCache(
            keys=[k.index_select(1, idx).contiguous() for k in self.keys],
            values=[v.index_select(1, idx).contiguous() for v in self.values],
            positions=self.positions.index_select(0, idx).clone(),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> KVCache:
        return KVCache(
            keys=[k.to(device=device, dtype=dtype) for k in self.keys],
            values=[v.to(device=device, dtype=dtype) for v in self.values],
            positions=self.positions.to(device=device),
        )

    def clone(self) -> KVCache:
        return KVCache([k.clone() for k in self.keys], [v.clone() for v in self.values], self.positions.clone())

    def equal(self, other: KVCache) -> bool:
        """Bitwise equality of every tensor and position id."""
        return (
            self.num_layers == other.num_layers
            and torch.equal(self.positions, other.positions)
            and all(torch.equal(a, b) for a, b in zip(self.keys, other.keys, strict=True))
            and all(torch.equal(a, b) for a, b in zip(self.values, other.values, strict=True))
        )

    # --- bridge to transformers -----------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, cache: Any, positions: torch.Tensor | None = None) -> KVCache:
        """Extract per-layer K/V (batch 0) from any transformers cache: 5.x `layers`, 4.x lists, legacy tuples."""
        pairs = _hf_layer_pairs(cache)
        keys = [k[0].detach() for k, _ in pairs]
        values = [v[0].detach() for _, v in pairs]
        seq = keys[0].shape[1]
        if positions is None:
            positions = torch.arange(seq, dtype=torch.long)
        return cls(keys=keys, values=values, positions=positions.detach().to("cpu", torch.long).reshape(-1))

    def to_hf(self, config: Any = None) -> Any:
        """A fresh transformers `DynamicCache` holding copies of these tensors (batch 1), ready for `forward`."""
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=config) if config is not None else DynamicCache()
        except TypeError:  # transformers 4.x: no config argument
            cache = DynamicCache()
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            cache.update(k.unsqueeze(0).clone(), v.unsqueeze(0).clone(), i)
        return cache


def _hf_layer_pairs(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if cache is None:
        raise ValueError("no cache: call the model with use_cache=True")
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56 / 5.x
        return [(layer.keys, layer.values) for layer in layers]
    key_cache = getattr(cache, "key_cache", None)
    if key_cache is not None:  # transformers 4.3x-4.55 DynamicCache
        return list(zip(key_cache, cache.value_cache, strict=True))
    if isinstance(cache, (tuple, list)):  # legacy tuple of (k, v) per layer
        return [(kv[0], kv[1]) for kv in cache]
    raise TypeError(f"unsupported cache type {type(cache).__name__}")
