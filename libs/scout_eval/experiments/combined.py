"""Experiment `combined` (Paper A operating points): Q2C selection x quantization, bytes vs quality.

KV modes with selection evict from the edge's full-context cache (computed anyway for scoring), quantize what
is kept, and the cloud answers from it (decode only). Reference: the full bf16 cache.
"""

from __future__ import annotations

from typing import Any

from scout.datasets import Example
from scout_eval.experiments.base import Experiment, model_identity, register
from scout_eval.experiments.codecs import codec
from scout_eval.experiments.common import scored

DEFAULT_CODECS = ["bf16", "int8", "int4"]
DEFAULT_RETENTIONS = [0.25, 0.5, 0.75, 1.0]


@register
class CombinedExperiment(Experiment):
    name = "combined"
    reference = "bf16@1"

    def setup(self) -> dict[str, Any]:
        from scout.inference import warmup
        from scout.models import load_model
        from scout.selection import get_selector

        self.lm = load_model(self.cfg.model, dtype=self.cfg.dtype, device=self.cfg.device)
        warmup(self.lm)
        self.selector = get_selector(self.cfg.options.get("selector", "q2c"))
        self.codecs = {name: codec(name, self.lm.spec) for name in self.cfg.options.get("codecs", DEFAULT_CODECS)}
        self.retentions = [float(r) for r in self.cfg.options.get("retentions", DEFAULT_RETENTIONS)]
        return {"model": model_identity(self.cfg.model)}

    def run_sample(self, ex: Example) -> dict[str, dict[str, Any]]:
        import torch

        from scout.inference import generate_from_caches
        from scout.prompts import prompt_for_example
        from scout.selection import score_prompt

        lm = self.lm
        prompt = prompt_for_example(lm.tokenizer, ex)
        ids = prompt.input_ids
        ctx = score_prompt(lm, prompt, [self.selector])
        scores = self.selector.score(ctx)
        edge_kv = ctx.kv.select(range(len(ids) - 1))  # the hand-off cache: prompt minus its last token
        c0 = prompt.context.start
        names: list[str] = []
        caches: list[Any] = []
        facts: list[dict[str, int]] = []
        for r in self.retentions:
            kept = torch.as_tensor(self.selector.select(scores, r)) + c0
            visible = torch.cat([torch.arange(c0), kept, torch.arange(prompt.context.end, len(ids) - 1)])
            pruned = edge_kv.select(visible)
            for name, run in self.codecs.items():
                rebuilt, nbytes = run(pruned)
                names.append(f"{name}@{r:g}")
                caches.append(rebuilt)
                facts.append({"bytes": nbytes, "kept": len(kept)})
        gens = generate_from_caches(
            lm, caches, ids[-1:], start_position=len(ids) - 1, max_new_tokens=self.cfg.max_new_tokens
        )
        out: dict[str, dict[str, Any]] = {
            name: scored(ex, gen, **fact) for name, gen, fact in zip(names, gens, facts, strict=True)
        }
        out["_meta"] = {"prompt_tokens": len(ids), "context_tokens": len(prompt.context)}
        return out
