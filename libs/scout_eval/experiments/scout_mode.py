"""Experiment `scout` (Paper B §1): the cloud re-reads the document attending only to positions the edge chose.

Per sample: Q2C scores from the edge model and from the cloud model (one scoring prefill each); the cloud's
full-context answer (reference) and the edge's own full-context answer (what `local` mode would give); then for
every retention: `scout@r` (cloud, seeing only the edge's selection), `own@r` (cloud, seeing only its own
selection; both computed as Scout mode's cloud side does, the visible tokens prefilled alone at their original
position ids), the overlap of the two selections and the position-set bytes that crossed the uplink. When the two
tokenizers differ (SmolLM2 -> Qwen), the edge's positions are mapped by character spans (`align_positions`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scout.datasets import Example
from scout_eval.experiments.base import Experiment, model_identity, register
from scout_eval.experiments.common import scored

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
        import torch

        from scout.inference import generate_from_caches, keep_mask, prefill
        from scout.positions import align_positions, encode_positions
        from scout.prompts import prompt_for_example
        from scout.selection import jaccard, score_prompt

        mx = self.cfg.max_new_tokens
        pe = prompt_for_example(self.edge.tokenizer, ex)
        pc = prompt_for_example(self.cloud.tokenizer, ex)
        edge_ctx = score_prompt(self.edge, pe, [self.selector])
        cloud_ctx = score_prompt(self.cloud, pc, [self.selector])
        edge_scores, cloud_scores = self.selector.score(edge_ctx), self.selector.score(cloud_ctx)
        n_edge, n_cloud = len(pe.context), len(pc.context)
        ids = pc.input_ids
        # Row 0: the cloud's full-context answer, from its scoring prefill's cache (prompt minus the last token).
        names, caches = ["cloud_full"], [cloud_ctx.kv.select(torch.arange(len(ids) - 1))]
        facts: dict[str, dict[str, Any]] = {}
        for r in self.retentions:
            edge_kept = self.selector.select(edge_scores, r)
            own = self.selector.select(cloud_scores, r)
            sent = len(encode_positions(edge_kept, n_edge))
            if self.same_tokenizer:
                mapped = edge_kept
            else:
                mapped = align_positions(pe.context_offsets, edge_kept, pc.context_offsets)
            inter = len(np.intersect1d(mapped, own))
            facts[f"scout@{r:g}"] = {
                "overlap": inter / max(1, len(own)),
                "jaccard": jaccard(mapped, own),
                "positions_bytes": sent,
            }
            facts[f"own@{r:g}"] = {"kept": len(own)}
            for name, kept in ((f"scout@{r:g}", mapped), (f"own@{r:g}", own)):
                # Scout mode's cloud side (`drop`): the visible tokens alone, prefilled at their original ids.
                keep = keep_mask(len(ids), pc.context.indices(), torch.as_tensor(kept, dtype=torch.long))[:-1]
                visible = torch.nonzero(keep).flatten()
                names.append(name)
                caches.append(prefill(self.cloud, [ids[i] for i in visible.tolist()], positions=visible).kv)
        gens = generate_from_caches(self.cloud, caches, ids[-1:], start_position=len(ids) - 1, max_new_tokens=mx)
        out: dict[str, dict[str, Any]] = {
            name: scored(ex, gen, **facts.get(name, {})) for name, gen in zip(names, gens, strict=True)
        }
        edge_ids = pe.input_ids
        (edge_gen,) = generate_from_caches(
            self.edge, [edge_ctx.kv.select(torch.arange(len(edge_ids) - 1))], edge_ids[-1:], max_new_tokens=mx
        )
        out["edge_full"] = scored(ex, edge_gen)
        out["_meta"] = {"edge_context_tokens": n_edge, "cloud_context_tokens": n_cloud}
        return out
