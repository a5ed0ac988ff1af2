"""Calibration trials: prefilled prompts, and batched forward passes over per-layer mixes of cache reconstructions.

Why batched: a calibration asks the same question many times (how much does the next-token distribution move when
these layers come from the low-bit reconstruction?). Every prompt is prefilled once; its cache is reconstructed
once per width; a trial only *selects*, per layer, which reconstruction to use. One forward pass holds a
full-precision reference row and up to `batch_size` trial rows, so a prompt costs one prefill plus a handful of
short batched decodes (`evaluate_variants`), and F1 on a small example set is the same with greedy decoding
(`f1_of_variants`). `scout.codec.calibrate` decides which trials to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from scout.kvcache import KVCache

if TYPE_CHECKING:
    from scout.datasets import Example
    from scout.models import LoadedModel
    from scout.prompts import Prompt


# ----------------------------------------------------------------------------------------------------------------
# calibration data
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CalibrationPrompt:
    """A prefilled calibration prompt: the edge cache (prompt minus its last token) and the tokens fed after it.

    `suffix` = [last prompt token] + teacher-forced answer tokens; the distribution predicted at each of its
    positions is scored, so a prompt contributes len(suffix) scored positions.
    """

    kv: KVCache
    suffix: list[int]
    answer_source: str = "greedy"

    @property
    def scored_positions(self) -> int:
        return len(self.suffix)


if TYPE_CHECKING:
    PromptLike = Sequence[int] | Prompt | CalibrationPrompt


def _ids_of(p: Any) -> list[int]:
    ids = getattr(p, "input_ids", p)
    out = [int(t) for t in ids]
    if len(out) < 2:
        raise ValueError("a calibration prompt needs at least 2 tokens (one cached, one fed)")
    return out


def prepare_prompts(
    lm: LoadedModel,
    prompts: Sequence[PromptLike],
    *,
    answer_ids: Sequence[Sequence[int]] | None = None,
    answer_tokens: int = 4,
    progress: bool = False,
) -> list[CalibrationPrompt]:
    """Prefill each prompt once (minus its last token) and fix the teacher-forced answer tokens.

    Without `answer_ids`, the forced tokens are the model's own greedy answer from the full-precision cache (up
    to `answer_tokens`, stopping at EOS or a newline), so the KL measures how far a quantized cache moves the
    model away from what it would have said. Already prepared prompts pass through unchanged.
    """
    from tqdm.auto import tqdm

    from scout.inference import generate_from_cache, prefill

    if answer_tokens < 0:
        raise ValueError("answer_tokens must be >= 0")
    if answer_ids is not None and len(answer_ids) != len(prompts):
        raise ValueError(f"{len(answer_ids)} answers for {len(prompts)} prompts")
    out: list[CalibrationPrompt] = []
    for i, p in enumerate(tqdm(prompts, desc="prefill", disable=not progress, leave=False)):
        if isinstance(p, CalibrationPrompt):
            out.append(p)
            continue
        ids = _ids_of(p)
        kv = prefill(lm, ids[:-1]).kv
        if answer_ids is not None:
            forced, source = [int(t) for t in answer_ids[i]][:answer_tokens], "gold"
        elif answer_tokens:
            gen = generate_from_cache(lm, kv, ids[-1:], max_new_tokens=answer_tokens, stop_at_newline=True)
            forced, source = gen.token_ids, "greedy"
        else:
            forced, source = [], "none"
        out.append(CalibrationPrompt(kv=kv, suffix=[ids[-1], *forced], answer_source=source))
    return out


# ----------------------------------------------------------------------------------------------------------------
# batched trials
# ----------------------------------------------------------------------------------------------------------------
Variant = tuple[int, ...]
"""One trial: for each layer, the index of the reconstruction it takes (0 = full precision, 1 = low bits, …)."""


@dataclass
class Sources:
    """Per-layer stacks of a prompt's cache reconstructions: keys[l] is [n_sources, kv_heads, seq, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    positions: torch.Tensor


def stack_sources(kv: KVCache, reconstructions: Sequence[KVCache]) -> Sources:
    caches = [kv, *reconstructions]
    return Sources(
        keys=[torch.stack([c.keys[i] for c in caches]) for i in range(kv.num_layers)],
        values=[torch.stack([c.values[i] for c in caches]) for i in range(kv.num_layers)],
        positions=kv.positions,
    )


def _batched_cache(lm: LoadedModel, src: Sources, rows: torch.Tensor) -> Any:
    """A transformers cache of len(rows) sequences; row r takes, at layer l, source rows[r, l]."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=lm.model.config)
    except TypeError:  # transformers 4.x
        cache = DynamicCache()
    dtype = lm.model.dtype
    for layer in range(len(src.keys)):
        pick = rows[:, layer].to(src.keys[layer].device)
        k = src.keys[layer].index_select(0, pick).to(device=lm.device, dtype=dtype)
        v = src.values[layer].index_select(0, pick).to(device=lm.device, dtype=dtype)
        cache.update(k, v, layer)
    return cache


@torch.inference_mode()
def _forward_rows(lm: LoadedModel, src: Sources, rows: torch.Tensor, suffix: Sequence[int]) -> torch.Tensor:
    """Feed `suffix` after each row's cache (at the original positions); log-probs [rows, len(suffix), vocab]."""
    from scout.inference import _set_attn, register_capture_attention

    _set_attn(lm.model, register_capture_attention())
    n_rows, n = rows.shape[0], len(suffix)
    start = int(src.positions.max().item()) + 1 if src.positions.numel() else 0
    ids = torch.tensor(suffix, device=lm.device).unsqueeze(0).expand(n_rows, n)
    pos = torch.arange(start, start + n, device=lm.device).unsqueeze(0).expand(n_rows, n)
    cache = _batched_cache(lm, src, rows)
    out = lm.model(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True)
    return torch.log_softmax(out.logits.float(), dim=-1)


def _kl_rows(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0 is the reference: KL(ref || row) and top-1 agreement of rows 1.., each averaged over positions."""
    ref = logp[0:1]
    kl = (ref.exp() * (ref - logp[1:])).sum(-1).clamp_min(0.0)  # [rows-1, positions]
    agree = (logp[1:].argmax(-1) == ref.argmax(-1)).float()
    return kl.mean(-1), agree.mean(-1)


def evaluate_variants(
    lm: LoadedModel,
    prepared: Sequence[CalibrationPrompt],
    sources: Sequence[Sources],
    variants: Sequence[Variant],
    batch_size: int,
    bar: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL and top-1 agreement of every variant on every prompt: two [variants, prompts] float64 tensors."""
    kl = torch.zeros(len(variants), len(prepared), dtype=torch.float64)
    agree = torch.zeros_like(kl)
    if not variants:
        return kl, agree
    num_layers = len(variants[0])
    reference = torch.zeros(1, num_layers, dtype=torch.long)
    for j, (cp, src) in enumerate(zip(prepared, sources, strict=True)):
        for start in range(0, len(variants), batch_size):
            chunk = torch.tensor(variants[start : start + batch_size], dtype=torch.long)
            logp = _forward_rows(lm, src, torch.cat([reference, chunk]), cp.suffix)
            k, a = _kl_rows(logp)
            kl[start : start + len(chunk), j] = k.double().cpu()
            agree[start : start + len(chunk), j] = a.double().cpu()
            if bar is not None:
                bar.update(len(chunk))
    return kl, agree


# ----------------------------------------------------------------------------------------------------------------
# F1 on a small example set (batched greedy decoding over variants)
# ----------------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def _greedy_rows(
    lm: LoadedModel, src: Sources, rows: torch.Tensor, last_token: int, max_new_tokens: int
) -> list[list[int]]:
    """Greedy continuation of every row (no reference row), stopping per row at EOS or a newline."""
    from scout.inference import _eos_ids, _set_attn, register_capture_attention

    _set_attn(lm.model, register_capture_attention())
    eos = _eos_ids(lm)
    n_rows = rows.shape[0]
    cache = _batched_cache(lm, src, rows)
    position = int(src.positions.max().item()) + 1
    feed = torch.full((n_rows, 1), last_token, dtype=torch.long, device=lm.device)
    outputs: list[list[int]] = [[] for _ in range(n_rows)]
    done = [False] * n_rows
    newline_cache: dict[int, bool] = {}
    for _ in range(max_new_tokens):
        pos = torch.full((n_rows, 1), position, dtype=torch.long, device=lm.device)
        res = lm.model(input_ids=feed, past_key_values=cache, position_ids=pos, use_cache=True)
        cache = res.past_key_values
        nxt = res.logits[:, -1].float().argmax(-1)
        for r, tok in enumerate(nxt.tolist()):
            if done[r]:
                continue
            if tok in eos:
                done[r] = True
                continue
            outputs[r].append(tok)
            if tok not in newline_cache:
                newline_cache[tok] = "\n" in lm.tokenizer.decode([tok])
            if newline_cache[tok]:
                done[r] = True
        if all(done):
            break
        feed = nxt.unsqueeze(1)
        position += 1
    return outputs


def f1_of_variants(
    lm: LoadedModel,
    examples: Sequence[Example],
    ex_prepared: Sequence[CalibrationPrompt],
    ex_sources: Sequence[Sources],
    variants: Sequence[Variant],
    batch_size: int,
    max_new_tokens: int,
) -> torch.Tensor:
    """F1 (the dataset's own metric) of each variant's greedy answer on each example: [variants, examples]."""
    from scout.metrics import PRIMARY_METRIC, clean_generation, score

    out = torch.zeros(len(variants), len(examples), dtype=torch.float64)
    for j, (ex, cp, src) in enumerate(zip(examples, ex_prepared, ex_sources, strict=True)):
        for start in range(0, len(variants), batch_size):
            chunk = torch.tensor(variants[start : start + batch_size], dtype=torch.long)
            answers = _greedy_rows(lm, src, chunk, cp.suffix[0], max_new_tokens)
            for r, toks in enumerate(answers):
                text = clean_generation(lm.tokenizer.decode(toks, skip_special_tokens=True))
                out[start + r, j] = score(ex, text)[PRIMARY_METRIC.get(ex.dataset, "f1")]
    return out
