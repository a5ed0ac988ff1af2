"""Running selectors on a prompt, and applying a selection through the inference core.

`score_prompt` runs the one prefill that every requested selector can read from (captured query rows under
SDPA, plus an eager prefill only if some selector insists on eager attention). `apply_selection` answers from a
selection three ways:

* `mask`  - re-prefill with unselected context hidden by the attention mask (the study's method); position
            ids `kept` (original) or `compacted` (what the study's code actually did).
* `drop`  - the same function as `mask`, computed on the visible tokens alone: they are prefilled at their
            original position ids (a hidden token is attended by nobody, so it need not be computed at all),
            then the last prompt token is fed. Equals `mask` up to float rounding and costs the kept fraction
            of a prefill: Scout mode's cloud side uses it.
* `evict` - KV modes with selection: the edge's *full-context* cache (computed anyway for scoring) is pruned to
            the kept positions and shipped; kept tokens' K/V still carry what they attended to in the full
            context. A different method from `mask`, usually better (nothing is recomputed without context).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from scout.inference import Generation, PositionMode, generate_from_cache, generate_masked, keep_mask, prefill
from scout.models import LoadedModel
from scout.prompts import Prompt
from scout.selection.base import ScoringContext, Selector

Application = Literal["mask", "drop", "evict"]


def score_prompt(lm: LoadedModel, prompt: Prompt, selectors: Sequence[Selector]) -> ScoringContext:
    """One prefill of the full prompt carrying whatever the selectors read."""
    needs = set().union(*(s.needs for s in selectors)) if selectors else set()
    wanted = [r for r in (s.rows_needed(prompt) for s in selectors) if r is not None]
    rows = slice(min(r.start for r in wanted), len(prompt)) if wanted else slice(len(prompt) - 1, len(prompt))
    res = prefill(lm, prompt.input_ids, capture_query_rows=rows)
    attentions = None
    if "attentions" in needs:
        attentions = prefill(lm, prompt.input_ids, output_attentions=True, attention_rows=rows).attentions
    return ScoringContext(
        prompt=prompt,
        kv=res.kv,
        num_heads=lm.spec.num_heads,
        head_dim=lm.spec.head_dim,
        scaling=res.scaling if res.scaling is not None else lm.spec.head_dim**-0.5,
        query_rows=rows,
        queries=res.queries,
        attentions=attentions,
    )


def apply_selection(
    lm: LoadedModel,
    prompt: Prompt,
    kept_context: Sequence[int] | np.ndarray,
    *,
    how: Application = "mask",
    position_mode: PositionMode = "kept",
    full_kv: ScoringContext | None = None,
    max_new_tokens: int = 32,
    stop_at_newline: bool = True,
) -> Generation:
    """Answer the prompt seeing only the kept context positions (indices relative to the context start)."""
    ids = prompt.input_ids
    keep = keep_mask(len(ids), prompt.context.indices(), torch.as_tensor(np.asarray(kept_context), dtype=torch.long))
    if how == "mask":
        return generate_masked(
            lm, ids, keep, position_mode=position_mode, max_new_tokens=max_new_tokens, stop_at_newline=stop_at_newline
        )
    if position_mode != "kept":
        raise ValueError("only `mask` supports compacted positions; drop/evict keep original position ids")
    visible = torch.nonzero(keep[:-1]).flatten()
    t0 = time.perf_counter()
    if how == "drop":
        kv = prefill(lm, [ids[i] for i in visible.tolist()], positions=visible).kv
    elif how == "evict":
        base = full_kv.kv if full_kv is not None else prefill(lm, ids[:-1]).kv
        kv = base.select(visible)
    else:
        raise ValueError(f"unknown application {how!r}; use mask, drop or evict")
    prefill_s = time.perf_counter() - t0
    gen = generate_from_cache(
        lm, kv, ids[-1:], start_position=len(ids) - 1, max_new_tokens=max_new_tokens, stop_at_newline=stop_at_newline
    )
    # Same timing keys as `mask` (prefill, generate): callers account every application alike.
    gen.timings = {"prefill": prefill_s + gen.timings.pop("rebuild") + gen.timings.pop("suffix"), **gen.timings}
    return gen
