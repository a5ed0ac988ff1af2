"""Experiment `selection` (Paper A §1): answer quality when only a fraction of the context is visible.

Per sample: one scoring prefill shared by every selector; the full-context answer (reference); then for every
method x retention, the answer with unselected context hidden (`mask`, the study's method, original position
ids) — or `drop`/`evict`, chosen by `options["application"]`. `evict` is what Scout's KV modes really send (the
edge's full-context KV at the kept positions); it needs no second prefill, so every condition is answered in one
batched decode from the scoring prefill's cache.
"""

from __future__ import annotations

from typing import Any

from scout.datasets import Example
from scout_eval.experiments.base import Experiment, model_identity, register
from scout_eval.experiments.common import scored

DEFAULT_METHODS = ["q2c", "q2c_mean", "snapkv", "h2o", "random", "streaming"]
DEFAULT_RETENTIONS = [0.1, 0.25, 0.5, 0.75]
METHOD_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "q2c": ("q2c", {}),
    "q2c_mean": ("q2c", {"layers": "mean"}),
    "snapkv": ("snapkv", {}),
    "h2o": ("h2o", {}),
    "random": ("random", {}),
    "streaming": ("streaming", {}),
    "knorm": ("knorm", {}),
}


@register
class SelectionExperiment(Experiment):
    name = "selection"
    reference = "full"

    def setup(self) -> dict[str, Any]:
        from scout.inference import warmup
        from scout.models import load_model
        from scout.selection import get_selector

        self.lm = load_model(self.cfg.model, dtype=self.cfg.dtype, device=self.cfg.device)
        warmup(self.lm)
        methods = self.cfg.options.get("methods", DEFAULT_METHODS)
        self.selectors = {m: get_selector(METHOD_OPTIONS[m][0], **METHOD_OPTIONS[m][1]) for m in methods}
        self.retentions = [float(r) for r in self.cfg.options.get("retentions", DEFAULT_RETENTIONS)]
        self.application = self.cfg.options.get("application", "mask")
        return {"model": model_identity(self.cfg.model)}

    def run_sample(self, ex: Example) -> dict[str, dict[str, Any]]:
        from scout.inference import generate
        from scout.positions import encode_positions
        from scout.prompts import prompt_for_example
        from scout.selection import apply_selection, score_prompt

        lm, mx = self.lm, self.cfg.max_new_tokens
        prompt = prompt_for_example(lm.tokenizer, ex)
        ctx = score_prompt(lm, prompt, list(self.selectors.values()))
        n = len(prompt.context)
        kept_sets = {
            f"{method}@{r:g}": sel.select(scores, r)
            for method, sel in self.selectors.items()
            for scores in [sel.score(ctx)]
            for r in self.retentions
        }
        if self.application == "evict":
            out = self._evict_batched(ex, prompt, ctx, kept_sets)
        else:
            out = {"full": scored(ex, generate(lm, prompt.input_ids, max_new_tokens=mx))}
            for cond, kept in kept_sets.items():
                gen = apply_selection(lm, prompt, kept, how=self.application, full_kv=None, max_new_tokens=mx)
                out[cond] = scored(ex, gen)
        for cond, kept in kept_sets.items():
            out[cond].update(kept=len(kept), positions_bytes=len(encode_positions(kept, n)))
        out["_meta"] = {"context_tokens": n, "prompt_tokens": len(prompt)}
        return out

    def _evict_batched(
        self, ex: Example, prompt: Any, ctx: Any, kept_sets: dict[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """`evict` (what Scout's KV modes send: the edge's full-context KV at the kept positions) for every
        condition in one batched decode from the scoring prefill's cache, the full cache as the reference row."""
        import torch

        from scout.inference import generate_from_caches, keep_mask

        ids = prompt.input_ids
        full = ctx.kv.select(torch.arange(len(ids) - 1))  # the hand-off cache: prompt minus its last token
        caches = [full]
        for kept in kept_sets.values():
            keep = keep_mask(len(ids), prompt.context.indices(), torch.as_tensor(kept, dtype=torch.long))
            caches.append(ctx.kv.select(torch.nonzero(keep[:-1]).flatten()))
        gens = generate_from_caches(
            self.lm, caches, ids[-1:], start_position=len(ids) - 1, max_new_tokens=self.cfg.max_new_tokens
        )
        names = ["full", *kept_sets]
        return {name: scored(ex, gen) for name, gen in zip(names, gens, strict=True)}
