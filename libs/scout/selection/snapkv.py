"""SnapKV (Li et al., 2024, "SnapKV: LLM Knows What You are Looking for Before Generation").

What it reads: the attention of an *observation window* (the last `window` prompt tokens) to every earlier
position, per layer and head. Per KV head (the query heads of a GQA group averaged), the window's attention is
summed over window rows, smoothed by 1-D pooling along positions (`kernel`, max pooling as in the paper; `avg` as
in some re-implementations) so that neighbours of important tokens are kept together, and each head selects its
own top-k. Scout transmits one position set, so every (layer, KV head) votes with its top-k and the positions
with most votes are kept (`select_top` on the 2-D scores).

This is SnapKV as its paper defines it. The study's "SnapKV" (last layer, last 32 rows never inside the context,
no pooling) is Q2C up to a constant on SQuAD-length questions (SEED.md), so it is not repeated here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scout.prompts import Prompt
from scout.selection.attention import attention_rows
from scout.selection.base import ScoringContext, Selector, register


@register
@dataclass
class SnapKV(Selector):
    name = "snapkv"
    needs = frozenset({"queries"})
    window: int = 32
    kernel: int = 7
    pooling: str = "max"

    def __post_init__(self) -> None:
        if self.window < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError("snapkv needs window >= 1 and an odd kernel >= 1")
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"snapkv pooling must be 'max' or 'avg', got {self.pooling!r}")

    def rows_needed(self, prompt: Prompt) -> slice:
        return slice(max(1, len(prompt) - self.window), len(prompt))

    def score(self, ctx: ScoringContext) -> torch.Tensor:
        if ctx.queries is None:
            raise ValueError("snapkv needs captured queries")
        window = self.rows_needed(ctx.prompt)
        rows = ctx.captured(window)
        positions = torch.arange(window.start, window.stop)
        kv_heads = ctx.kv.keys[0].shape[0]
        votes = []
        for layer in range(ctx.kv.num_layers):
            probs = attention_rows(ctx.queries[layer][:, rows], ctx.kv.keys[layer], positions, ctx.scaling)
            per_head = probs[:, :, ctx.context].sum(dim=1)  # [heads, n_context]
            per_kv_head = per_head.view(kv_heads, -1, per_head.shape[-1]).mean(dim=1)
            pad = self.kernel // 2
            pool = F.max_pool1d if self.pooling == "max" else F.avg_pool1d
            kwargs = {} if self.pooling == "max" else {"count_include_pad": False}
            pooled = pool(per_kv_head.unsqueeze(1), self.kernel, stride=1, padding=pad, **kwargs).squeeze(1)
            votes.append(pooled)
        return torch.cat(votes, dim=0)  # [layers x kv_heads, n_context]
