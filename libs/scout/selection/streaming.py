"""StreamingLLM (Xiao et al., ICLR 2024, "Efficient Streaming Language Models with Attention Sinks").

What it reads: nothing but positions. Keeps the first `sink` context tokens (attention sinks) and then the most
recent ones: a query-agnostic baseline that shows what a recency window alone achieves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scout.selection.base import ScoringContext, Selector, register


@register
@dataclass
class Streaming(Selector):
    name = "streaming"
    sink: int = 4

    def score(self, ctx: ScoringContext) -> torch.Tensor:
        n = ctx.n_context
        scores = torch.arange(n, dtype=torch.float32)
        scores[: min(self.sink, n)] = float(n) + 1.0
        return scores
