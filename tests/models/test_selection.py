"""Every registered selector on the real SmolLM2 and real SQuAD v2 prompts; hook-based vs eager Q2C.

Tolerance for hook-based vs eager Q2C, stated once: in fp32 both compute softmax(q k^T / sqrt(d)) from the same
tensors, only in a different kernel, so scores agree to 1e-4 relative to the largest score and the selected sets
are identical at every retention level. In bf16 the eager path rounds every attention weight to bf16 while the
hook path accumulates in fp32, so the sets may differ at near-ties: at least 90 % overlap is required.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scout.inference import generate
from scout.prompts import prompt_for_example
from scout.selection import (
    SELECTORS,
    apply_selection,
    get_selector,
    jaccard,
    keep_count,
    overlap_at_k,
    score_prompt,
)

pytestmark = pytest.mark.models
RETENTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
VARIANTS = [(name, {}) for name in sorted(SELECTORS)] + [("q2c", {"layers": "mean"}), ("q2c", {"impl": "eager"})]


@pytest.fixture(scope="module")
def scored(smol, squad_answerable):
    """Prompts with one scoring context each, shared by every selector (eager attention included)."""
    selectors = [get_selector(n, **o) for n, o in VARIANTS]
    out = []
    for ex in squad_answerable[:2]:
        p = prompt_for_example(smol.tokenizer, ex)
        out.append((p, score_prompt(smol, p, selectors)))
    return out


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=[f"{n}{o or ''}" for n, o in VARIANTS])
def test_selector_returns_valid_sets_and_full_retention_is_exact(smol, scored, name, options) -> None:
    sel = get_selector(name, **options)
    for prompt, ctx in scored:
        scores = sel.score(ctx)
        n = len(prompt.context)
        assert scores.shape[-1] == n and torch.isfinite(scores).all()
        previous: set[int] = set()
        for r in RETENTIONS:
            kept = sel.select(scores, r)
            assert kept.dtype == np.int64 and len(kept) == keep_count(n, r)
            assert np.all(np.diff(kept) > 0) and kept[0] >= 0 and kept[-1] < n
            assert np.array_equal(kept, sel.select(scores, r))  # deterministic
            if sel.name != "snapkv":  # per-head voting need not nest across k; top-k of one score does
                assert previous <= set(kept.tolist())
            previous = set(kept.tolist())
    prompt, _ = scored[0]
    everything = sel.select(sel.score(scored[0][1]), 1.0)
    plain = generate(smol, prompt.input_ids, max_new_tokens=8, stop_at_newline=False)
    for how in ("mask", "drop"):
        g = apply_selection(smol, prompt, everything, how=how, max_new_tokens=8, stop_at_newline=False)
        assert g.token_ids == plain.token_ids, how


def test_hook_q2c_equals_eager_q2c_in_fp32(smol_fp32, squad_answerable) -> None:
    hook, eager = get_selector("q2c"), get_selector("q2c", impl="eager")
    hook_mean, eager_mean = get_selector("q2c", layers="mean"), get_selector("q2c", layers="mean", impl="eager")
    for ex in squad_answerable[:4]:
        p = prompt_for_example(smol_fp32.tokenizer, ex)
        ctx = score_prompt(smol_fp32, p, [hook, eager])
        for a_sel, b_sel in ((hook, eager), (hook_mean, eager_mean)):
            a, b = a_sel.score(ctx), b_sel.score(ctx)
            assert torch.max(torch.abs(a - b)).item() <= 1e-4 * torch.max(torch.abs(b)).item()
            for r in (0.25, 0.5, 0.75):
                assert np.array_equal(a_sel.select(a, r), b_sel.select(b, r))


def test_hook_q2c_close_to_eager_q2c_in_bf16(scored) -> None:
    hook, eager = get_selector("q2c"), get_selector("q2c", impl="eager")
    for _, ctx in scored:
        for r in (0.25, 0.5, 0.75):
            assert overlap_at_k(hook.select(hook.score(ctx), r), eager.select(eager.score(ctx), r)) >= 0.9


def test_methods_differ_from_each_other(scored) -> None:
    """A sanity check that the registry holds different methods, not one under several names."""
    _, ctx = scored[0]
    sets = {n: get_selector(n).select(get_selector(n).score(ctx), 0.25) for n in ("q2c", "h2o", "random", "streaming")}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert jaccard(sets[a], sets[b]) < 1.0, (a, b)


def test_a_shared_prefill_gives_every_selector_its_own_scores(smol_fp32, squad_answerable) -> None:
    """One prefill serves every selector (the union of their rows is captured; H2O needs all of them). Each
    selector's scores must equal those of a prefill made for it alone: Q2C reading every captured row instead
    of its question-side rows once turned it into H2O whenever both ran together."""
    selectors = [get_selector(n, **o) for n, o in VARIANTS]
    for ex in squad_answerable[:1]:
        p = prompt_for_example(smol_fp32.tokenizer, ex)
        shared = score_prompt(smol_fp32, p, selectors)
        for sel in selectors:
            alone = sel.score(score_prompt(smol_fp32, p, [sel]))
            together = sel.score(shared)
            tol = 1e-5 * torch.max(torch.abs(alone)).item()
            assert torch.max(torch.abs(alone - together)).item() <= tol, (sel.name, sel)
    q2c_mean, h2o = get_selector("q2c", layers="mean"), get_selector("h2o")
    assert not torch.allclose(q2c_mean.score(shared), h2o.score(shared))


def test_dropping_and_masking_agree_on_real_selections(smol_fp32, squad_answerable) -> None:
    """Q2C at 50 %: mask and drop give the same greedy answer in fp32 (same function, other shapes)."""
    q2c = get_selector("q2c")
    for ex in squad_answerable[:3]:
        p = prompt_for_example(smol_fp32.tokenizer, ex)
        kept = q2c.select(q2c.score(score_prompt(smol_fp32, p, [q2c])), 0.5)
        masked = apply_selection(smol_fp32, p, kept, how="mask", max_new_tokens=8, stop_at_newline=False)
        dropped = apply_selection(smol_fp32, p, kept, how="drop", max_new_tokens=8, stop_at_newline=False)
        assert masked.token_ids == dropped.token_ids, ex.id
