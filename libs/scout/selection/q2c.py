"""Q2C: question-to-context attention (the study's Paper A §1; its authors' `exp_utils.py`).

score(j) = sum over question-side query rows i (every prompt token after the context: the question, separators
and the answer cue) and over heads of attention(i -> j), for context positions j. Layer aggregation `last` (the
study's default) or `mean` over layers (the study found them equivalent, r > 0.99).

`impl="hook"` (default) computes the rows from post-RoPE queries captured under SDPA and the cached keys: no
attention matrix is materialised, so it runs with fused kernels and at context lengths where eager attention's
O(layers x heads x n^2) memory does not fit. `impl="eager"` reads `output_attentions` as the study did; the two
agree to float32 rounding (see tests/models/test_selection.py for the stated tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scout.selection.attention import attention_rows
from scout.selection.base import ScoringContext, Selector, register


@register
@dataclass
class Q2C(Selector):
    name = "q2c"
    layers: str = "last"
    impl: str = "hook"

    def __post_init__(self) -> None:
        if self.layers not in ("last", "mean"):
            raise ValueError(f"q2c layers must be 'last' or 'mean', got {self.layers!r}")
        if self.impl not in ("hook", "eager"):
            raise ValueError(f"q2c impl must be 'hook' or 'eager', got {self.impl!r}")

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"attentions"} if self.impl == "eager" else {"queries"})

    def _layers(self, num_layers: int) -> list[int]:
        return [num_layers - 1] if self.layers == "last" else list(range(num_layers))

    def score(self, ctx: ScoringContext) -> torch.Tensor:
        own = self.rows_needed(ctx.prompt)
        assert own is not None
        local = ctx.captured(own)  # the question-side rows only, whatever else the shared prefill captured
        layer_ids = self._layers(ctx.kv.num_layers)
        per_layer = []
        for layer in layer_ids:
            if self.impl == "eager":
                if ctx.attentions is None:
                    raise ValueError("q2c(impl='eager') needs attentions from an eager prefill")
                probs = ctx.attentions[layer][:, local].float()
            else:
                if ctx.queries is None:
                    raise ValueError("q2c(impl='hook') needs captured queries")
                positions = torch.arange(own.start, own.stop)
                probs = attention_rows(ctx.queries[layer][:, local], ctx.kv.keys[layer], positions, ctx.scaling)
            per_layer.append(probs[:, :, ctx.context].sum(dim=(0, 1)))
        return torch.stack(per_layer).mean(dim=0)
