"""Attention rows rebuilt from captured post-RoPE queries and cached keys, without an n x n matrix.

Eager attention materialises [heads, seq, seq] per layer (and `output_attentions` keeps every layer's), which
is what made the study need eager attention and what runs out of memory at long contexts. Selectors need only a
few rows (the question side) or column sums over rows (H2O), so these helpers compute softmax rows for the
captured queries, in row chunks: memory O(heads x chunk x seq) whatever the context length.
"""

from __future__ import annotations

import torch


def _expand_kv(keys: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[kv_heads, n, d] -> [heads, n, d]: grouped-query attention shares each KV head across a group."""
    group = num_heads // keys.shape[0]
    if group * keys.shape[0] != num_heads:
        raise ValueError(f"{num_heads} query heads do not divide into {keys.shape[0]} KV heads")
    return keys if group == 1 else keys.repeat_interleave(group, dim=0)


def attention_rows(
    queries: torch.Tensor, keys: torch.Tensor, row_positions: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Causal softmax rows [heads, rows, n] (float32) for queries [heads, rows, d] over keys [kv_heads, n, d].

    `row_positions[i]` is the prompt index of query row i: it sees keys 0..row_positions[i].
    """
    q = queries.float()
    k = _expand_kv(keys, q.shape[0]).float()
    logits = torch.matmul(q, k.transpose(1, 2)) * scaling
    n = k.shape[1]
    future = torch.arange(n, device=q.device)[None, :] > row_positions.to(q.device)[:, None]
    logits.masked_fill_(future[None], float("-inf"))
    return torch.softmax(logits, dim=-1)


def attention_column_sums(
    queries: torch.Tensor,
    keys: torch.Tensor,
    row_positions: torch.Tensor,
    scaling: float,
    *,
    chunk: int = 256,
) -> torch.Tensor:
    """Sum over query rows of the causal attention each key receives, per head: [heads, n] (float32).

    Rows are processed `chunk` at a time, so peak memory is O(heads x chunk x n) instead of O(heads x rows x n).
    """
    k = _expand_kv(keys, queries.shape[0]).float()
    total = torch.zeros(queries.shape[0], k.shape[1], dtype=torch.float32, device=queries.device)
    for start in range(0, queries.shape[1], chunk):
        rows = slice(start, start + chunk)
        total += attention_rows(queries[:, rows], k, row_positions[rows], scaling).sum(dim=1)
    return total
