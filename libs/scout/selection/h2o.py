"""H2O: heavy hitters (Zhang et al., NeurIPS 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference").

What it reads: the attention every prompt row pays to every earlier position, accumulated over all rows
(column sums of the causal attention matrix), summed over heads and averaged over layers. Positions that many
tokens attend to are "heavy hitters". The accumulation favours early positions (they are visible to more rows),
which is part of the method. Computed from captured queries in row chunks, never as a full matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scout.prompts import Prompt
from scout.selection.attention import attention_column_sums
from scout.selection.base import ScoringContext, Selector, register


@register
@dataclass
class H2O(Selector):
    name = "h2o"
    needs = frozenset({"queries"})
    layers: str = "mean"
    chunk: int = 256

    def __post_init__(self) -> None:
        if self.layers not in ("last", "mean"):
            raise ValueError(f"h2o layers must be 'last' or 'mean', got {self.layers!r}")

    def rows_needed(self, prompt: Prompt) -> slice:
        return slice(0, len(prompt))

    def score(self, ctx: ScoringContext) -> torch.Tensor:
        n = len(ctx.prompt)
        if ctx.queries is None:
            raise ValueError("h2o needs captured queries of every prompt row")
        rows = ctx.captured(slice(0, n))  # raises unless every row was captured
        layer_ids = [ctx.kv.num_layers - 1] if self.layers == "last" else range(ctx.kv.num_layers)
        positions = torch.arange(n)
        per_layer = [
            attention_column_sums(
                ctx.queries[layer][:, rows], ctx.kv.keys[layer], positions, ctx.scaling, chunk=self.chunk
            ).sum(dim=0)[ctx.context]
            for layer in layer_ids
        ]
        return torch.stack(per_layer).mean(dim=0)
