"""Experiment `quantization` (Paper A §2-§3): answer quality from a quantized KV cache, same model both ends.

Per sample: one edge prefill of the prompt minus its last token (the hand-off point); every codec reconstructs
the cache and the model answers from it (decode only, every codec's cache as one row of a batched decode). MMLU
samples are scored by the choice-letter logits after the cached prompt instead of by generated text.
"""

from __future__ import annotations

from typing import Any

from scout.datasets import Example
from scout_eval.experiments.base import Experiment, model_identity, register
from scout_eval.experiments.codecs import codec
from scout_eval.experiments.common import choice_scored, scored

DEFAULT_CODECS = ["bf16", "int8", "int4", "int2"]


@register
class QuantizationExperiment(Experiment):
    name = "quantization"
    reference = "bf16"

    def setup(self) -> dict[str, Any]:
        from scout.inference import warmup
        from scout.models import load_model

        self.lm = load_model(self.cfg.model, dtype=self.cfg.dtype, device=self.cfg.device)
        warmup(self.lm)
        self.codecs = {name: codec(name, self.lm.spec) for name in self.cfg.options.get("codecs", DEFAULT_CODECS)}
        return {"model": model_identity(self.cfg.model)}

    def run_sample(self, ex: Example) -> dict[str, dict[str, Any]]:
        from scout.inference import generate_from_caches, prefill
        from scout.prompts import prompt_for_example

        lm = self.lm
        prompt = prompt_for_example(lm.tokenizer, ex)
        ids = prompt.input_ids
        kv = prefill(lm, ids[:-1]).kv
        out: dict[str, dict[str, Any]] = {}
        rebuilt = {name: run(kv) for name, run in self.codecs.items()}
        if ex.dataset == "mmlu":
            for name, (cache, nbytes) in rebuilt.items():
                out[name] = choice_scored(lm, ex, cache, ids[-1], bytes=nbytes)
        else:  # every codec's cache answers in one batched decode (same prompt, same length)
            gens = generate_from_caches(
                lm, [cache for cache, _ in rebuilt.values()], ids[-1:], max_new_tokens=self.cfg.max_new_tokens
            )
            for (name, (_, nbytes)), gen in zip(rebuilt.items(), gens, strict=True):
                out[name] = scored(ex, gen, bytes=nbytes)
        out["_meta"] = {"prompt_tokens": len(ids), "context_tokens": len(prompt.context)}
        return out
