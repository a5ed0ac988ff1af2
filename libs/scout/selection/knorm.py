"""K-norm (Devoto et al., EMNLP 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression").

What it reads: the cached keys only. Keys with a *low* L2 norm tend to receive high attention, so the score is
the negated key norm, averaged over layers and KV heads. Query-agnostic and nearly free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scout.selection.base import ScoringContext, Selector, register


@register
@dataclass
class KNorm(Selector):
    name = "knorm"
    needs = frozenset({"keys"})

    def score(self, ctx: ScoringContext) -> torch.Tensor:
        norms = torch.stack([k[:, ctx.context].float().norm(dim=-1).mean(dim=0) for k in ctx.kv.keys])
        return -norms.mean(dim=0)
