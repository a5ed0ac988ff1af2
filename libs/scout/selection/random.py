"""Random selection: the floor every method must beat. Seeded, so runs repeat exactly."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scout.selection.base import ScoringContext, Selector, register


@register
@dataclass
class RandomSelector(Selector):
    name = "random"
    seed: int = 0

    def score(self, ctx: ScoringContext) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(ctx.n_context, generator=g, dtype=torch.float64).float()
