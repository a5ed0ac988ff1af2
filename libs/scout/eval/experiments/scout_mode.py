"""Experiment `scout` (Paper B §1): the cloud re-reads the document attending only to positions the edge chose.

Per sample: Q2C scores from the edge model and from the cloud model (one scoring prefill each); the cloud's
full-context answer (reference) and the edge's own full-context answer (what `local` mode would give); then for
every retention: `scout@r` (cloud, context masked to the edge's selection), `own@r` (cloud, masked to its own
selection), the overlap of the two selections and the position-set bytes that crossed the uplink. When the two
tokenizers differ (SmolLM2 -> Qwen), the edge's positions are mapped by character spans (`align_positions`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scout.eval.datasets import Example
from scout.eval.experiments.common import scored
from scout.eval.runner import Experiment, model_identity, register

DEFAULT_RETENTIONS = [0.25, 0.5, 0.75]


@register
class ScoutExperiment(Experiment):
    name = "scout"
    reference = "cloud_full"

    def setup(self) -> dict[str, Any]:
        from scout.inference import warmup
        from scout.models import load_model, tokenizer_fingerprint
        from scout.selection import get_selector

        if not self.cfg.cloud_model:
            raise ValueError("the scout experiment needs --cloud-model")
        self.edge = load_model(self.cfg.model, dtype=self.cfg.dtype, device=self.cfg.device)
        self.cloud = load_model(self.cfg.cloud_model, dtype=self.cfg.dtype, device=self.cfg.device)
        warmup(self.edge)
        warmup(self.cloud)
        self.same_tokenizer = tokenizer_fingerprint(self.edge.tokenizer) == tokenizer_fingerprint(self.cloud.tokenizer)
        self.selector = get_selector(self.cfg.options.get("selector", "q2c"))
        self.retentions = [float(r) for r in self.cfg.options.get("retentions", DEFAULT_RETENTIONS)]
        return {
            "edge": model_identity(self.cfg.model),
            "cloud": model_identity(self.cfg.cloud_model),
            "same_tokenizer": self.same_tokenizer,
        }

    def run_sample(self, ex: Example) -> dict[str, dict[str, Any]]:
        from scout.inference import generate
        from scout.positions import align_positions, encode_positions
        from scout.prompts import prompt_for_example
        from scout.selection import apply_selection, jaccard, score_prompt

        mx = self.cfg.max_new_tokens
        pe = prompt_for_example(self.edge.tokenizer, ex)
        pc = prompt_for_example(self.cloud.tokenizer, ex)
        edge_scores = self.selector.score(score_prompt(self.edge, pe, [self.selector]))
        cloud_scores = self.selector.score(score_prompt(self.cloud, pc, [self.selector]))
        out: dict[str, dict[str, Any]] = {
            "cloud_full": scored(ex, generate(self.cloud, pc.input_ids, max_new_tokens=mx)),
            "edge_full": scored(ex, generate(self.edge, pe.input_ids, max_new_tokens=mx)),
        }
        n_edge, n_cloud = len(pe.context), len(pc.context)
        for r in self.retentions:
            edge_kept = self.selector.select(edge_scores, r)
            own = self.selector.select(cloud_scores, r)
            sent = len(encode_positions(edge_kept, n_edge))
            if self.same_tokenizer:
                mapped = edge_kept
            else:
                mapped = align_positions(pe.context_offsets, edge_kept, pc.context_offsets)
            inter = len(np.intersect1d(mapped, own))
            overlap = inter / max(1, len(own))
            facts = {"overlap": overlap, "jaccard": jaccard(mapped, own), "positions_bytes": sent}
            g_scout = apply_selection(self.cloud, pc, mapped, how="mask", max_new_tokens=mx)
            g_own = apply_selection(self.cloud, pc, own, how="mask", max_new_tokens=mx)
            out[f"scout@{r:g}"] = scored(ex, g_scout, **facts)
            out[f"own@{r:g}"] = scored(ex, g_own, kept=len(own))
        out["_meta"] = {"edge_context_tokens": n_edge, "cloud_context_tokens": n_cloud}
        return out
