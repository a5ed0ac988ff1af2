"""Position sets from real Q2C selections on real SQuAD v2 contexts, and alignment across tokenizers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scout.datasets import load_examples
from scout.models import installed, load_tokenizer
from scout.positions import CHECK_BYTES, align_positions, decode_positions, encode_positions, study_bytes
from scout.prompts import build_prompt, prompt_for_example
from scout.selection import get_selector, score_prompt

pytestmark = pytest.mark.models


def test_real_q2c_sets_at_75_percent_fit_in_a_bitmap_plus_two(smol, squad_answerable) -> None:
    q2c = get_selector("q2c")
    ratios = []
    for ex in squad_answerable:
        p = prompt_for_example(smol.tokenizer, ex)
        n = len(p.context)
        kept = q2c.select(q2c.score(score_prompt(smol, p, [q2c])), 0.75)
        blob = encode_positions(kept, n)
        assert np.array_equal(decode_positions(blob, n), kept)
        # the set's own bytes fit a bitmap plus two; the integrity check is a fixed CHECK_BYTES on top
        assert len(encode_positions(kept, n, checked=False)) == len(blob) - CHECK_BYTES
        assert len(blob) - CHECK_BYTES <= math.ceil(n / 8) + 2
        ratios.append(study_bytes(len(kept)) / (len(blob) - CHECK_BYTES))
    med, low = np.median(ratios), min(ratios)
    print(f"\nQ2C 75 %: median {med:.1f}x smaller than 4 B/index before the check (min {low:.1f}x)")
    # at 75 % a bitmap alone is 4 x 0.75n / (n/8) = 24x smaller than int32 indices; runs make it smaller still
    assert np.median(ratios) > 20


def _char_coverage(offsets: list[tuple[int, int]], kept: np.ndarray, length: int) -> np.ndarray:
    mask = np.zeros(length, dtype=bool)
    for i in kept:
        s, e = offsets[i]
        mask[s:e] = True
    return mask


@pytest.mark.qwen
def test_alignment_from_smollm2_to_qwen_tokens_keeps_the_same_text() -> None:
    if not installed("qwen2.5-coder-0.5b"):
        pytest.skip("qwen2.5-coder-0.5b not installed")
    smol_tok, qwen_tok = load_tokenizer("smollm2-135m"), load_tokenizer("qwen2.5-coder-0.5b")
    rng = np.random.default_rng(0)
    for ex in load_examples("squad_v2", n=10, seed=5):
        a = build_prompt(smol_tok, context=ex.context, question=ex.question)
        b = build_prompt(qwen_tok, context=ex.context, question=ex.question)
        assert a.input_ids != b.input_ids  # two different tokenizers
        n = len(a.context)
        # a clustered selection: 3 random runs of context tokens, as attention-based selectors tend to produce
        starts = np.sort(rng.choice(n - 10, size=3, replace=False))
        kept = np.unique(np.concatenate([np.arange(s, min(n, s + n // 6)) for s in starts]))
        mapped = align_positions(a.context_offsets, kept, b.context_offsets)
        src = _char_coverage(a.context_offsets, kept, len(ex.context))
        dst = _char_coverage(b.context_offsets, mapped, len(ex.context))
        iou = (src & dst).sum() / max(1, (src | dst).sum())
        assert iou > 0.9, (ex.id, iou)
        # mapping back returns (almost) the original set
        back = align_positions(b.context_offsets, mapped, a.context_offsets)
        assert len(set(back.tolist()) ^ set(kept.tolist())) <= 0.1 * len(kept) + 2
