"""The prefill/generate core: every mode of Scout ends in one of these calls.

* `prefill` runs the model over a prompt and returns our `KVCache`, the next-token logits and, on request, the
  attention rows (eager attention) or the post-RoPE query states of chosen rows (captured inside a registered
  attention function wrapping SDPA, so no n x n matrix is ever materialised; selection builds Q2C on this).
* `generate` is plain greedy generation from a prompt.
* `generate_from_cache` continues from a cache produced elsewhere (the edge's, shipped over the uplink, possibly
  quantized or with context positions dropped). Dropped positions keep their original position ids, so RoPE is
  intact; the uncached prompt suffix (at least the last prompt token) is fed at its original positions.
* `generate_from_caches` is `generate_from_cache` for many caches of one prompt in one batch (evaluations).
* `generate_masked` re-prefills the full prompt with an attention mask that hides unselected context positions
  (the study's method and Scout mode's cloud side). Position ids are passed explicitly: `kept` preserves the
  original ids; `compacted` renumbers the visible tokens contiguously, which is what the study's code did without
  saying so (transformers derives position ids from the mask's cumulative sum). They are different methods.

Everything is greedy and deterministic. No method here materialises more than one forward pass's activations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from scout.kvcache import KVCache
from scout.models import LoadedModel

PositionMode = Literal["kept", "compacted"]
CAPTURE_IMPL = "scout_capture"


# ----------------------------------------------------------------------------------------------------------------
# query capture: an attention function that records post-RoPE query rows, then runs SDPA
# ----------------------------------------------------------------------------------------------------------------
class _CaptureState(threading.local):
    def __init__(self) -> None:
        self.rows: slice | None = None
        self.queries: dict[int, torch.Tensor] = {}
        self.scaling: float | None = None


_capture = _CaptureState()
_registered = False


def _capture_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any
) -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _capture.rows is not None:
        # query: [batch, heads, q_len, head_dim], RoPE already applied by the attention module.
        _capture.queries[int(module.layer_idx)] = query[0, :, _capture.rows, :].detach().clone()
        _capture.scaling = float(getattr(module, "scaling", query.shape[-1] ** -0.5))
    return sdpa_attention_forward(module, query, key, value, *args, **kwargs)


def register_capture_attention() -> str:
    """Register the capturing attention (and SDPA's mask builder under its name) with transformers, once."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(CAPTURE_IMPL, _capture_attention)
        AttentionMaskInterface.register(CAPTURE_IMPL, sdpa_mask)
        _registered = True
    return CAPTURE_IMPL


def _set_attn(model: Any, impl: str) -> None:
    if getattr(model.config, "_attn_implementation", None) != impl:
        model.set_attn_implementation(impl)


# ----------------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class PrefillResult:
    """What a prefill produced: the cache, the next-token logits, and optional attention/query captures."""

    kv: KVCache
    logits: torch.Tensor  # [vocab], float32, for the token after the last prompt token
    attentions: list[torch.Tensor] | None = None  # per layer [heads, rows, seq] (rows = attention_rows)
    queries: list[torch.Tensor] | None = None  # per layer [heads, rows, head_dim], post-RoPE
    scaling: float | None = None  # the attention modules' softmax scale (1/sqrt(head_dim) for Llama/Qwen2)
    seconds: float = 0.0


@dataclass
class Generation:
    """Greedy output plus the time each stage took (seconds)."""

    token_ids: list[int]
    text: str
    timings: dict[str, float] = field(default_factory=dict)
    finish: str = "length"  # "eos", "newline" or "length"


def _ids_tensor(input_ids: Sequence[int] | torch.Tensor, device: str) -> torch.Tensor:
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.ndim == 2:
        if ids.shape[0] != 1:
            raise ValueError("batch size must be 1")
        ids = ids[0]
    if ids.ndim != 1 or ids.numel() == 0:
        raise ValueError("input_ids must be a non-empty 1-D sequence")
    return ids.unsqueeze(0).to(device)


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids: set[int] = set()
    for src in (lm.tokenizer.eos_token_id, getattr(lm.model.generation_config, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    return ids


# ----------------------------------------------------------------------------------------------------------------
# prefill
# ----------------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def prefill(
    lm: LoadedModel,
    input_ids: Sequence[int] | torch.Tensor,
    *,
    output_attentions: bool = False,
    attention_rows: slice | None = None,
    capture_query_rows: slice | None = None,
    keep: torch.Tensor | None = None,
    position_mode: PositionMode = "kept",
    positions: Sequence[int] | torch.Tensor | None = None,
) -> PrefillResult:
    """Run the model over `input_ids`; return the KV cache of every token and the next-token logits.

    `output_attentions` switches to eager attention for this call (the only way to get attention weights) and
    returns rows `attention_rows` of each layer's [heads, seq, seq] matrix; `capture_query_rows` records the
    post-RoPE queries of those rows with SDPA instead (O(rows x seq) memory later, not O(seq^2) now).
    `keep` (bool per position) hides positions with the attention mask, as in `generate_masked`.
    `positions` gives each token its own (original) position id instead of 0..n-1: prefilling only the visible
    tokens of a prompt at their original positions computes exactly what a `keep`-masked prefill computes for
    them (a hidden token is attended by nobody, and its own outputs are discarded), at the cost of the visible
    tokens alone: the fast path of `drop` and of Scout mode's cloud side.
    """
    model = lm.model
    ids = _ids_tensor(input_ids, lm.device)
    n = ids.shape[1]
    if positions is not None:
        if keep is not None:
            raise ValueError("give either keep or positions, not both")
        pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if pos.numel() != n:
            raise ValueError(f"{pos.numel()} positions for {n} tokens")
        if int(pos[0]) < 0 or (n > 1 and not bool(torch.all(pos[1:] > pos[:-1]))):
            raise ValueError("positions must be non-negative and strictly increasing")
        mask, pos = None, pos.unsqueeze(0).to(lm.device)
    else:
        mask, pos = _mask_and_positions(keep, n, position_mode, lm.device)
    impl = "eager" if output_attentions else register_capture_attention()
    _set_attn(model, impl)
    _capture.rows = capture_query_rows if not output_attentions else None
    _capture.queries = {}
    t0 = time.perf_counter()
    try:
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            output_attentions=output_attentions,
        )
    finally:
        rows_captured, scaling = _capture.queries, _capture.scaling
        _capture.rows, _capture.queries, _capture.scaling = None, {}, None
    seconds = time.perf_counter() - t0
    cache = out.past_key_values
    kv = KVCache.from_hf(cache, positions=pos[0].cpu())
    attentions = None
    if output_attentions:
        rows = attention_rows or slice(None)
        attentions = [a[0, :, rows, :].detach() for a in out.attentions]
    queries = None
    if capture_query_rows is not None and not output_attentions:
        queries = [rows_captured[i] for i in range(len(rows_captured))]
    return PrefillResult(
        kv=kv,
        logits=out.logits[0, -1].float(),
        attentions=attentions,
        queries=queries,
        scaling=scaling,
        seconds=seconds,
    )


def _mask_and_positions(
    keep: torch.Tensor | None, n: int, position_mode: PositionMode, device: str
) -> tuple[torch.Tensor | None, torch.Tensor]:
    if keep is None:
        return None, torch.arange(n, device=device).unsqueeze(0)
    keep = torch.as_tensor(keep, dtype=torch.bool).reshape(-1)
    if keep.numel() != n:
        raise ValueError(f"keep mask has {keep.numel()} entries for {n} tokens")
    if not bool(keep[0]):
        # A hidden first token would leave its query row with nothing to attend to (NaN under SDPA); every
        # template starts with a non-context prefix, which is also the attention sink that must stay visible.
        raise ValueError("the first prompt token must stay visible")
    if position_mode == "kept":
        pos = torch.arange(n)
    elif position_mode == "compacted":
        pos = (torch.cumsum(keep.long(), 0) - 1).clamp(min=0)
    else:
        raise ValueError(f"unknown position_mode {position_mode!r}")
    return keep.long().unsqueeze(0).to(device), pos.unsqueeze(0).to(device)


# ----------------------------------------------------------------------------------------------------------------
# greedy decoding
# ----------------------------------------------------------------------------------------------------------------
def _greedy(
    lm: LoadedModel,
    cache: Any,
    logits: torch.Tensor,
    next_position: int,
    mask: torch.Tensor | None,
    max_new_tokens: int,
    stop_at_newline: bool,
) -> tuple[list[int], str]:
    eos = _eos_ids(lm)
    out: list[int] = []
    finish = "length"
    for step in range(max_new_tokens):
        tok = int(torch.argmax(logits).item())
        if tok in eos:
            finish = "eos"
            break
        out.append(tok)
        if stop_at_newline and "\n" in lm.tokenizer.decode([tok]):
            finish = "newline"
            break
        if step == max_new_tokens - 1:
            break
        if mask is not None:
            mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype, device=mask.device)], dim=1)
        res = lm.model(
            input_ids=torch.tensor([[tok]], device=lm.device),
            past_key_values=cache,
            attention_mask=mask,
            position_ids=torch.tensor([[next_position]], device=lm.device),
            use_cache=True,
        )
        cache = res.past_key_values
        logits = res.logits[0, -1].float()
        next_position += 1
    return out, finish


def _finish(lm: LoadedModel, tokens: list[int], finish: str, timings: dict[str, float]) -> Generation:
    return Generation(
        token_ids=tokens,
        text=lm.tokenizer.decode(tokens, skip_special_tokens=True),
        timings=timings,
        finish=finish,
    )


@torch.inference_mode()
def generate(
    lm: LoadedModel,
    input_ids: Sequence[int] | torch.Tensor,
    *,
    max_new_tokens: int = 32,
    stop_at_newline: bool = True,
) -> Generation:
    """Plain greedy generation, computed the way every Scout mode computes it: prefill all prompt tokens but the
    last, then feed the last one as the first decode step.

    That split is the hand-off point between edge and cloud (the edge's cache covers the prompt minus its last
    token), so a cache that crossed the uplink intact yields *bitwise* the same tokens as this function. Running
    the whole prompt in one forward pass computes the same function with differently shaped matmuls, which in
    bf16 can flip near-tied greedy choices; `generate_reference` does that (Hugging Face `generate`).
    """
    _set_attn(lm.model, register_capture_attention())
    ids = _ids_tensor(input_ids, lm.device)
    n = ids.shape[1]
    t0 = time.perf_counter()
    cache = None
    if n > 1:
        cache = lm.model(input_ids=ids[:, :-1], use_cache=True).past_key_values
    t1 = time.perf_counter()
    out = lm.model(
        input_ids=ids[:, -1:],
        past_key_values=cache,
        position_ids=torch.tensor([[n - 1]], device=lm.device),
        use_cache=True,
    )
    tokens, finish = _greedy(
        lm, out.past_key_values, out.logits[0, -1].float(), n, None, max_new_tokens, stop_at_newline
    )
    return _finish(lm, tokens, finish, {"prefill": t1 - t0, "generate": time.perf_counter() - t1})


@torch.inference_mode()
def generate_reference(
    lm: LoadedModel, input_ids: Sequence[int] | torch.Tensor, *, max_new_tokens: int = 32
) -> list[int]:
    """Hugging Face `generate` (greedy, one-pass prefill): the independent reference for the core's output."""
    ids = _ids_tensor(input_ids, lm.device)
    eos = sorted(_eos_ids(lm))
    out = lm.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos or None,
        pad_token_id=(eos or [0])[0],
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return [t for t in out[0, ids.shape[1] :].tolist() if t not in eos]


@torch.inference_mode()
def generate_from_cache(
    lm: LoadedModel,
    kv: KVCache,
    suffix_ids: Sequence[int] | torch.Tensor,
    *,
    start_position: int | None = None,
    max_new_tokens: int = 32,
    stop_at_newline: bool = True,
) -> Generation:
    """Continue from a cache produced elsewhere: feed `suffix_ids` (the prompt tokens the cache does not hold,
    at least the last one) at their original positions, then decode greedily.

    `start_position` is the original position of the first suffix token; by default one past the largest cached
    position, which is right whenever only context (not the prompt's tail) was dropped.
    """
    _set_attn(lm.model, register_capture_attention())
    if kv.num_layers != lm.spec.num_layers:
        raise ValueError(f"cache has {kv.num_layers} layers, model {lm.spec.name} has {lm.spec.num_layers}")
    ids = _ids_tensor(suffix_ids, lm.device)
    start = kv.next_position if start_position is None else start_position
    t0 = time.perf_counter()
    cache = kv.to(device=lm.device, dtype=lm.model.dtype).to_hf(lm.model.config)
    t1 = time.perf_counter()
    pos = torch.arange(start, start + ids.shape[1], device=lm.device).unsqueeze(0)
    out = lm.model(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True)
    t2 = time.perf_counter()
    tokens, finish = _greedy(
        lm,
        out.past_key_values,
        out.logits[0, -1].float(),
        start + ids.shape[1],
        None,
        max_new_tokens,
        stop_at_newline,
    )
    return _finish(lm, tokens, finish, {"rebuild": t1 - t0, "suffix": t2 - t1, "generate": time.perf_counter() - t2})


@torch.inference_mode()
def generate_from_caches(
    lm: LoadedModel,
    kvs: Sequence[KVCache],
    suffix_ids: Sequence[int] | torch.Tensor,
    *,
    start_position: int | None = None,
    max_new_tokens: int = 32,
    stop_at_newline: bool = True,
) -> list[Generation]:
    """`generate_from_cache` for many caches of one prompt at once (one row per cache, greedy, one forward per step).

    Why: an evaluation answers the same prompt from a dozen reconstructions of one cache (codecs, selections).
    On a CPU a decode step is bound by reading the weights, so a batch of B rows costs little more than one row;
    this is what makes n=200 runs feasible on two cores. Caches may differ in length: shorter rows are padded
    after their last cached token and the padding is hidden by the attention mask, so every row sees exactly its
    own tokens at their original position ids. A row's tokens equal `generate_from_cache`'s up to floating-point
    reduction order (batched matmuls may sum in another order; in bf16 that can flip a near-tied greedy choice).
    """
    if not kvs:
        return []
    _set_attn(lm.model, register_capture_attention())
    for kv in kvs:
        if kv.num_layers != lm.spec.num_layers:
            raise ValueError(f"cache has {kv.num_layers} layers, model {lm.spec.name} has {lm.spec.num_layers}")
    ids = _ids_tensor(suffix_ids, lm.device)
    batch, s = len(kvs), ids.shape[1]
    dtype = lm.model.dtype
    t0 = time.perf_counter()
    longest = max(kv.seq_len for kv in kvs)
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=lm.model.config)
    except TypeError:  # transformers 4.x: no config argument
        cache = DynamicCache()
    for layer in range(lm.spec.num_layers):
        k0, v0 = kvs[0].keys[layer], kvs[0].values[layer]
        keys = torch.zeros((batch, k0.shape[0], longest, k0.shape[-1]), dtype=dtype, device=lm.device)
        values = torch.zeros((batch, v0.shape[0], longest, v0.shape[-1]), dtype=dtype, device=lm.device)
        for b, kv in enumerate(kvs):
            keys[b, :, : kv.seq_len] = kv.keys[layer].to(device=lm.device, dtype=dtype)
            values[b, :, : kv.seq_len] = kv.values[layer].to(device=lm.device, dtype=dtype)
        cache.update(keys, values, layer)
    mask = torch.zeros((batch, longest + s), dtype=torch.long, device=lm.device)
    starts = []
    for b, kv in enumerate(kvs):
        mask[b, : kv.seq_len] = 1
        starts.append(kv.next_position if start_position is None else start_position)
    mask[:, longest:] = 1
    pos = torch.tensor(starts, device=lm.device).unsqueeze(1) + torch.arange(s, device=lm.device).unsqueeze(0)
    t1 = time.perf_counter()
    out = lm.model(
        input_ids=ids.expand(batch, s), past_key_values=cache, attention_mask=mask, position_ids=pos, use_cache=True
    )
    t2 = time.perf_counter()
    eos = _eos_ids(lm)
    newline: dict[int, bool] = {}
    tokens: list[list[int]] = [[] for _ in range(batch)]
    finish = ["length"] * batch
    done = [False] * batch
    cache, logits, next_pos = out.past_key_values, out.logits[:, -1].float(), pos[:, -1:] + 1
    for step in range(max_new_tokens):
        picks = torch.argmax(logits, dim=-1).tolist()
        for b, tok in enumerate(picks):
            if done[b]:
                continue
            if tok in eos:
                done[b], finish[b] = True, "eos"
                continue
            tokens[b].append(tok)
            if stop_at_newline:
                if tok not in newline:
                    newline[tok] = "\n" in lm.tokenizer.decode([tok])
                if newline[tok]:
                    done[b], finish[b] = True, "newline"
        if all(done) or step == max_new_tokens - 1:
            break
        feed = torch.tensor([[t] for t in picks], device=lm.device)
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=lm.device)], dim=1)
        res = lm.model(
            input_ids=feed, past_key_values=cache, attention_mask=mask, position_ids=next_pos, use_cache=True
        )
        cache, logits, next_pos = res.past_key_values, res.logits[:, -1].float(), next_pos + 1
    timings = {"rebuild": t1 - t0, "suffix": t2 - t1, "generate": time.perf_counter() - t2, "batch": float(batch)}
    return [_finish(lm, tokens[b], finish[b], dict(timings)) for b in range(batch)]


@torch.inference_mode()
def generate_masked(
    lm: LoadedModel,
    input_ids: Sequence[int] | torch.Tensor,
    keep: torch.Tensor | Sequence[bool],
    *,
    position_mode: PositionMode = "kept",
    max_new_tokens: int = 32,
    stop_at_newline: bool = True,
) -> Generation:
    """Prefill the full prompt with unselected positions hidden by the attention mask, then decode greedily.

    Hidden tokens are neither attended to during the prompt nor during generation. With `position_mode="kept"`
    every token keeps its original position id; `"compacted"` renumbers the visible ones 0..k-1.
    """
    _set_attn(lm.model, register_capture_attention())
    ids = _ids_tensor(input_ids, lm.device)
    n = ids.shape[1]
    mask, pos = _mask_and_positions(torch.as_tensor(keep, dtype=torch.bool), n, position_mode, lm.device)
    assert mask is not None
    t0 = time.perf_counter()
    cache = None
    if n > 1:  # same hand-off split as `generate`: prompt minus last token, then the last token
        cache = lm.model(
            input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True
        ).past_key_values
    t1 = time.perf_counter()
    out = lm.model(
        input_ids=ids[:, -1:],
        attention_mask=mask,
        position_ids=pos[:, -1:],
        past_key_values=cache,
        use_cache=True,
    )
    next_position = int(pos[0, -1].item()) + 1
    tokens, finish = _greedy(
        lm,
        out.past_key_values,
        out.logits[0, -1].float(),
        next_position,
        mask,
        max_new_tokens,
        stop_at_newline,
    )
    return _finish(lm, tokens, finish, {"prefill": t1 - t0, "generate": time.perf_counter() - t1})


@torch.inference_mode()
def warmup(lm: LoadedModel, tokens: int = 16) -> None:
    """One short forward pass so that later timings exclude one-off kernel initialisation."""
    ids = torch.arange(1, tokens + 1, device=lm.device).unsqueeze(0) % lm.spec.vocab_size
    _set_attn(lm.model, register_capture_attention())
    lm.model(input_ids=ids, use_cache=True)


def keep_mask(n: int, context: range | slice, kept_context: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Bool mask over n prompt positions: everything visible except context positions not in `kept_context`
    (indices relative to the context start)."""
    start, stop = (context.start, context.stop) if isinstance(context, (range, slice)) else context
    mask = torch.ones(n, dtype=torch.bool)
    mask[start:stop] = False
    kept = torch.as_tensor(kept_context, dtype=torch.long)
    if kept.numel():
        if int(kept.min()) < 0 or int(kept.max()) >= stop - start:
            raise IndexError("kept context index out of range")
        mask[kept + start] = True
    return mask
