"""The prefill/generate core on the real SmolLM2-135M and real SQuAD v2 prompts.

Tolerances, stated once:
* cache extract -> serialise -> rebuild, and masking with every position kept: token-identical greedy output in
  bf16 against the core's plain generation (same hand-off split, same kernels, same tensors: no slack), and
  token-identical in fp32 against Hugging Face `generate` (an independent one-pass implementation; in bf16 its
  different matmul shapes may flip near-ties, so bf16 is not compared with it).
* physically dropping positions vs hiding them with the attention mask: the two compute the same function but
  with different tensor shapes, so reductions run in a different order. In fp32 the greedy answers must be
  identical on every prompt and the first-step logits within 2e-3 (max abs); bf16 flips near-ties and is not
  asserted token-exact.
"""

from __future__ import annotations

import io
import random

import pytest
import torch
from safetensors.torch import load, save

from scout.inference import (
    generate,
    generate_from_cache,
    generate_from_caches,
    generate_masked,
    generate_reference,
    keep_mask,
    prefill,
)
from scout.kvcache import KVCache
from scout.prompts import prompt_for_example

pytestmark = pytest.mark.models
MAX_NEW = 8


def _serialise(kv: KVCache) -> KVCache:
    """Bytes and back through safetensors (what crosses a process boundary; never pickle)."""
    tensors = {"positions": kv.positions}
    for i, (k, v) in enumerate(zip(kv.keys, kv.values, strict=True)):
        tensors[f"k.{i}"], tensors[f"v.{i}"] = k.contiguous(), v.contiguous()
    data = save(tensors)
    assert isinstance(io.BytesIO(data).read(8), bytes)
    t = load(data)
    n = kv.num_layers
    return KVCache([t[f"k.{i}"] for i in range(n)], [t[f"v.{i}"] for i in range(n)], t["positions"])


def _random_keep(prompt, retention: float, seed: int) -> torch.Tensor:
    rng = random.Random(seed)
    c = len(prompt.context)
    kept = sorted(rng.sample(range(c), int(retention * c)))
    return keep_mask(len(prompt), prompt.context.indices(), kept)


def test_generation_from_rebuilt_cache_is_token_identical(smol, squad_answerable) -> None:
    produced = 0
    for ex in squad_answerable[:5]:
        ids = prompt_for_example(smol.tokenizer, ex).input_ids
        plain = generate(smol, ids, max_new_tokens=MAX_NEW, stop_at_newline=False)
        edge = prefill(smol, ids[:-1])  # the edge holds the prompt minus its last token
        shipped = _serialise(edge.kv)
        assert shipped.equal(edge.kv)
        cloud = generate_from_cache(smol, shipped, ids[-1:], max_new_tokens=MAX_NEW, stop_at_newline=False)
        assert cloud.token_ids == plain.token_ids, ex.id
        produced += len(plain.token_ids)
    assert produced > 0  # some prompts end at EOS at once; the comparison must not be vacuous overall


def test_rebuilt_cache_matches_huggingface_generate_in_fp32(smol_fp32, squad_answerable) -> None:
    lm = smol_fp32
    for ex in squad_answerable[:4]:
        ids = prompt_for_example(lm.tokenizer, ex).input_ids
        reference = generate_reference(lm, ids, max_new_tokens=MAX_NEW)
        shipped = _serialise(prefill(lm, ids[:-1]).kv)
        cloud = generate_from_cache(lm, shipped, ids[-1:], max_new_tokens=MAX_NEW, stop_at_newline=False)
        assert cloud.token_ids == reference, ex.id


def test_masking_with_every_position_kept_equals_unmasked(smol, squad_answerable) -> None:
    for ex in squad_answerable[:4]:
        ids = prompt_for_example(smol.tokenizer, ex).input_ids
        plain = generate(smol, ids, max_new_tokens=MAX_NEW, stop_at_newline=False)
        everything = torch.ones(len(ids), dtype=torch.bool)
        for mode in ("kept", "compacted"):
            masked = generate_masked(
                smol, ids, everything, position_mode=mode, max_new_tokens=MAX_NEW, stop_at_newline=False
            )
            assert masked.token_ids == plain.token_ids, (ex.id, mode)


def test_dropping_positions_equals_masking_them(smol_fp32, squad_answerable) -> None:
    lm = smol_fp32
    for i, ex in enumerate(squad_answerable[:6]):
        p = prompt_for_example(lm.tokenizer, ex)
        ids = p.input_ids
        keep = _random_keep(p, 0.75, seed=i)
        masked = generate_masked(lm, ids, keep, max_new_tokens=MAX_NEW, stop_at_newline=False)
        # drop: prefill the prompt (minus its last token) with the same mask, then physically remove the hidden
        # positions from the cache; the survivors keep their original position ids.
        edge = prefill(lm, ids[:-1], keep=keep[:-1])
        dropped = edge.kv.select(torch.nonzero(keep[:-1]).flatten())
        assert dropped.seq_len == int(keep[:-1].sum()) < len(ids) - 1
        assert dropped.next_position == len(ids) - 1
        cloud = generate_from_cache(lm, dropped, ids[-1:], max_new_tokens=MAX_NEW, stop_at_newline=False)
        assert cloud.token_ids == masked.token_ids, ex.id
        # first-step logits agree within the stated fp32 tolerance
        full = prefill(lm, ids, keep=keep).logits
        from_cache = _first_logits(lm, dropped, ids[-1])
        assert torch.max(torch.abs(full - from_cache)).item() < 2e-3


@torch.inference_mode()
def _first_logits(lm, kv: KVCache, last_token: int) -> torch.Tensor:
    cache = kv.to_hf(lm.model.config)
    pos = torch.tensor([[kv.next_position]])
    return lm.model(input_ids=torch.tensor([[last_token]]), past_key_values=cache, position_ids=pos).logits[0, -1]


def test_kept_and_compacted_positions_are_different_methods(smol, squad_answerable) -> None:
    p = prompt_for_example(smol.tokenizer, squad_answerable[0])
    keep = _random_keep(p, 0.5, seed=3)
    kept = prefill(smol, p.input_ids, keep=keep, position_mode="kept")
    compact = prefill(smol, p.input_ids, keep=keep, position_mode="compacted")
    assert kept.kv.positions[-1].item() == len(p) - 1
    assert compact.kv.positions[-1].item() == int(keep.sum()) - 1
    assert not torch.allclose(kept.logits, compact.logits)


def test_reported_kv_bytes_equal_tensor_bytes(smol, smol_fp32, squad_answerable) -> None:
    ids = prompt_for_example(smol.tokenizer, squad_answerable[1]).input_ids
    for lm in (smol, smol_fp32):
        kv = prefill(lm, ids).kv
        assert kv.num_layers == lm.spec.num_layers == 30
        assert kv.keys[0].shape == (lm.spec.num_kv_heads, len(ids), lm.spec.head_dim)
        assert kv.nbytes() == lm.spec.kv_bytes(len(ids))
    assert smol.spec.kv_bytes_per_token() == 2 * 30 * 3 * 64 * 2


def test_captured_queries_reproduce_eager_attention_rows(smol_fp32, squad_answerable) -> None:
    """Post-RoPE queries captured under SDPA + cached keys give the eager attention rows (basis of Q2C)."""
    lm = smol_fp32
    p = prompt_for_example(lm.tokenizer, squad_answerable[2])
    rows = slice(p.query_side.start, p.query_side.end)
    cap = prefill(lm, p.input_ids, capture_query_rows=rows)
    eager = prefill(lm, p.input_ids, output_attentions=True, attention_rows=rows)
    assert cap.queries is not None and eager.attentions is not None
    n, group = len(p), lm.spec.num_heads // lm.spec.num_kv_heads
    q_pos = torch.arange(rows.start, rows.stop)
    causal = q_pos[:, None] >= torch.arange(n)[None, :]
    for layer in (0, 15, 29):
        q = cap.queries[layer]  # [heads, rows, dim]
        k = cap.kv.keys[layer].repeat_interleave(group, dim=0)  # [heads, n, dim]
        scores = (q @ k.transpose(1, 2)) / lm.spec.head_dim**0.5
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        assert torch.allclose(probs, eager.attentions[layer].float(), atol=1e-4), layer
    assert torch.allclose(cap.logits, eager.logits, atol=1e-3)


def test_hidden_first_token_is_refused(smol, squad_answerable) -> None:
    ids = prompt_for_example(smol.tokenizer, squad_answerable[0]).input_ids
    keep = torch.ones(len(ids), dtype=torch.bool)
    keep[0] = False
    with pytest.raises(ValueError, match="first prompt token"):
        generate_masked(smol, ids, keep)


def test_batched_generation_from_caches_equals_one_at_a_time(smol_fp32, squad_answerable) -> None:
    """Rows of unequal length (padding hidden by the mask), a quantized-like perturbation and the full cache: each
    row's greedy answer equals `generate_from_cache` on that cache alone (fp32; batching only reorders sums)."""
    lm = smol_fp32
    rows = 0
    for ex in squad_answerable[:3]:
        p = prompt_for_example(lm.tokenizer, ex)
        ids = p.input_ids
        full = prefill(lm, ids[:-1]).kv
        c = len(p.context)
        caches = [full]
        for retention, seed in ((0.25, 1), (0.5, 2), (0.75, 3)):
            keep = _random_keep(p, retention, seed)[:-1]
            caches.append(full.select(torch.nonzero(keep).flatten()))
        noisy = KVCache([k + 0.01 * torch.randn_like(k) for k in full.keys], list(full.values), full.positions)
        caches.append(noisy)
        assert len({kv.seq_len for kv in caches}) >= 3 and c > 8
        batched = generate_from_caches(lm, caches, ids[-1:], max_new_tokens=MAX_NEW, stop_at_newline=False)
        for kv, got in zip(caches, batched, strict=True):
            alone = generate_from_cache(lm, kv, ids[-1:], max_new_tokens=MAX_NEW, stop_at_newline=False)
            assert got.token_ids == alone.token_ids and got.finish == alone.finish
            rows += 1
    assert rows == 15


def test_batched_generation_stops_each_row_on_its_own(smol_fp32, squad_answerable) -> None:
    lm = smol_fp32
    ids = prompt_for_example(lm.tokenizer, squad_answerable[0]).input_ids
    full = prefill(lm, ids[:-1]).kv
    tiny = full.select(torch.arange(0, 4))  # almost nothing visible: a different, usually longer answer
    out = generate_from_caches(lm, [full, tiny], ids[-1:], max_new_tokens=MAX_NEW, stop_at_newline=True)
    for kv, got in zip([full, tiny], out, strict=True):
        alone = generate_from_cache(lm, kv, ids[-1:], max_new_tokens=MAX_NEW, stop_at_newline=True)
        assert (got.token_ids, got.finish) == (alone.token_ids, alone.finish)
    assert generate_from_caches(lm, [], ids[-1:]) == []


def test_prefilling_only_the_visible_tokens_equals_the_masked_prefill(smol_fp32, squad_answerable) -> None:
    """`positions`: the visible tokens alone at their original ids give the masked prefill's K/V for them."""
    lm = smol_fp32
    for i, ex in enumerate(squad_answerable[:3]):
        p = prompt_for_example(lm.tokenizer, ex)
        ids = p.input_ids
        keep = _random_keep(p, 0.4, seed=10 + i)[:-1]
        visible = torch.nonzero(keep).flatten()
        masked = prefill(lm, ids[:-1], keep=keep).kv.select(visible)
        sparse = prefill(lm, [ids[j] for j in visible.tolist()], positions=visible).kv
        assert torch.equal(sparse.positions, masked.positions) and sparse.seq_len < len(ids) - 1
        for a, b in zip(sparse.keys + sparse.values, masked.keys + masked.values, strict=True):
            assert torch.max(torch.abs(a - b)).item() < 1e-3
    with pytest.raises(ValueError, match="strictly increasing"):
        prefill(lm, [1, 2, 3], positions=[0, 2, 2])
    with pytest.raises(ValueError, match="positions for"):
        prefill(lm, [1, 2, 3], positions=[0, 1])
    with pytest.raises(ValueError, match="not both"):
        prefill(lm, [1, 2], positions=[0, 1], keep=torch.ones(2, dtype=torch.bool))
