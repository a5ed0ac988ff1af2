"""Experiment `selection` (Paper A §1): answer quality when only a fraction of the context is visible.

Per sample: one scoring prefill shared by every selector; the full-context answer (reference); then for every
method x retention, the answer with unselected context hidden (`mask`, the study's method, original position
ids) — or `drop`/`evict`, chosen by `options["application"]`.
"""

from __future__ import annotations

from typing import Any

from scout.eval.datasets import Example
from scout.eval.experiments.common import scored
from scout.eval.runner import Experiment, model_identity, register

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
        out: dict[str, dict[str, Any]] = {"full": scored(ex, generate(lm, prompt.input_ids, max_new_tokens=mx))}
        n = len(prompt.context)
        for method, sel in self.selectors.items():
            scores = sel.score(ctx)
            for r in self.retentions:
                kept = sel.select(scores, r)
                gen = apply_selection(lm, prompt, kept, how=self.application, full_kv=None, max_new_tokens=mx)
                out[f"{method}@{r:g}"] = scored(ex, gen, kept=len(kept), positions_bytes=len(encode_positions(kept, n)))
        out["_meta"] = {"context_tokens": n, "prompt_tokens": len(prompt)}
        return out
