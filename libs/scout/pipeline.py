"""The edge and cloud computations of every mode, without I/O: what the services run, and the in-process path.

Why one module: DESIGN.md promises that a request answered by four services over NATS and Redis gets the answer
the library gives in one process. That holds *by construction* when both call the same functions on the same
bytes: the services (``services/<role>/handlers.py``) call exactly these and add only I/O (store puts and gets,
bus messages), and `answer_inprocess` calls them in sequence with the bytes handed over in memory. Every
hand-off between roles is therefore bytes here too (the raw KV blob, the uplink blob, the position set), so the
in-process path also exercises the wire format.

One request, step by step (the roles in brackets):

1. [selector] `edge_prefill`: tokenize, one scoring prefill of the full prompt (the edge keeps its KV), and the
   selector's scores (Q2C by default).
2. [transport policy] `scout.policy.rules.plan_request` (re-exported here with `PolicyConfig`, `forced_plan`,
   `threshold_plan`): the planner over an operating-point table when one is configured, otherwise the threshold
   rule; a mode forced by the request wins either way. Planning is the policy's, not this module's.
3. By mode:
   * ``local``: `answer_local` (the edge continues from its own cache; nothing crosses the uplink).
   * KV modes (``full``, ``int8``, ``int4``, ``mixed``, with or without selection): [selector] `raw_kv_blob` (the
     hand-off cache, prompt minus its last token, bf16, staged in the *edge* store) -> [quantizer] `encode_uplink`
     (evict to the kept context positions, quantize per bit plan, one checksummed ``scout-kv`` blob: what crosses
     the uplink) -> [cloud decoder] `answer_from_blob` (verify checksum and model fingerprint, rebuild, feed the
     last prompt token at its original position, generate).
   * ``scout`` / ``text``: [selector] `EdgeResult.position_set` (scout only) -> [cloud decoder]
     `answer_from_document` (the cloud's own model re-reads the document; in scout mode only the kept positions,
     prefilled alone at their original position ids, mapped across tokenizers by character spans when the two
     models tokenize differently).

What counts as "bytes sent" (`scout.policy.plans.uplink_payload_bytes`, re-exported here): the content this
request puts on the uplink. KV modes: the blob. Scout: the position set, the question and the 32-byte document
reference. Text: question and reference. Local: nothing. Not counted: the fixed message envelope (ids, reply
subject, trace context; a few hundred bytes of JSON in every mode) and the document itself, which is
content-addressed and uploaded once, not per request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from scout.codec.quant import BitPlan, QuantSpec, quantize_cache
from scout.codec.registry import bit_plan_of, bit_plan_spec
from scout.codec.wire import DEFAULT_MAX_BYTES, decode_blob, encode_blob
from scout.inference import Generation, generate, generate_from_cache
from scout.kvcache import KVCache
from scout.metrics import clean_generation
from scout.policy.plans import (
    DEFAULT_MIXED_PLAN,
    DOCUMENT_REF_BYTES,
    KV_MODES,
    MODES,
    Plan,
    bit_plan_for,
    uplink_payload_bytes,
)
from scout.policy.rules import PolicyConfig, forced_plan, plan_request, threshold_plan
from scout.positions import align_positions, decode_positions, encode_positions
from scout.prompts import Prompt, build_prompt
from scout.selection import apply_selection, get_selector, score_prompt

if TYPE_CHECKING:
    from scout.models import LoadedModel, ModelSpec
    from scout.selection.base import Selector

__all__ = [
    "DEFAULT_MIXED_PLAN",
    "DOCUMENT_REF_BYTES",
    "KV_MODES",
    "MODES",
    "Answer",
    "EdgeResult",
    "InProcessAnswer",
    "PolicyConfig",
    "UplinkBlob",
    "answer_from_blob",
    "answer_from_document",
    "answer_inprocess",
    "answer_local",
    "bit_plan_for",
    "bit_plan_name",
    "edge_prefill",
    "encode_uplink",
    "forced_plan",
    "parse_bit_plan",
    "plan_request",
    "raw_kv_blob",
    "same_tokenizer",
    "threshold_plan",
    "uplink_payload_bytes",
    "visible_positions",
]

WIRE_DTYPE = torch.bfloat16
"""KV crosses the uplink (and is staged on the edge) in bf16 whatever the model's compute dtype (``full`` mode)."""


# ----------------------------------------------------------------------------------------------------------------
# bit plans by name (what `Plan.bit_plan` carries; `DEFAULT_MIXED_PLAN` and `bit_plan_for` are re-exported from
# `scout.policy.plans`, the parsing is `scout.codec.registry`'s)
# ----------------------------------------------------------------------------------------------------------------
def parse_bit_plan(name: str) -> BitPlan:
    """The `BitPlan` a plan names: ``bf16`` (16 bits), ``int8``, ``int4``, ``int2``, or ``mixed:<layer>=<bits>,…``
    (4 bits by default, the listed layers at their bits). `scout.codec.registry.CodecSpecError` (a ValueError)
    for anything else; the registry is the one parser of these names."""
    return bit_plan_of(name)


def bit_plan_name(plan: BitPlan) -> str:
    """The inverse of `parse_bit_plan` for uniform and 4-bit-default plans."""
    return bit_plan_spec(plan)


# ----------------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Answer:
    """A generated answer: the raw continuation, the cleaned answer span, its tokens and the stage times."""

    text: str
    answer: str
    token_ids: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds: ``decode`` (verify + rebuild + feed the suffix, or re-prefill) and ``generate``."""


def _answer(gen: Generation, decode_s: float, generate_s: float) -> Answer:
    return Answer(
        text=gen.text,
        answer=clean_generation(gen.text),
        token_ids=list(gen.token_ids),
        timings={"decode": decode_s, "generate": generate_s},
    )


@dataclass
class EdgeResult:
    """What the edge holds after its prefill: the prompt, the KV of every prompt token, and selection scores."""

    prompt: Prompt
    kv: KVCache
    scores: torch.Tensor
    selector: Selector
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds: ``tokenize``, ``prefill`` (the scoring prefill) and ``score``."""

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.input_ids)

    @property
    def context_start(self) -> int:
        return self.prompt.context.start

    @property
    def context_tokens(self) -> int:
        return len(self.prompt.context)

    @property
    def extra_tokens(self) -> int:
        """Hand-off cache tokens outside the context (instruction, question): KV modes send them in full."""
        return max(0, self.prompt_tokens - 1 - self.context_tokens)

    def kept(self, retention: float) -> np.ndarray:
        """Sorted context-relative indices the selector keeps at ``retention``."""
        if self.context_tokens == 0:
            return np.zeros(0, dtype=np.int64)
        return self.selector.select(self.scores, retention)

    def position_set(self, retention: float) -> bytes:
        """The kept set encoded for the wire (`scout.positions`, the smallest codec)."""
        return encode_positions(self.kept(retention), self.context_tokens)

    def handoff_kv(self) -> KVCache:
        """The cache the edge hands over: every prompt token but the last (the cloud feeds that one)."""
        return self.kv.select(torch.arange(self.prompt_tokens - 1))

    def suffix_ids(self) -> list[int]:
        """Prompt tokens the hand-off cache does not hold: the last one."""
        return list(self.prompt.input_ids[-1:])


def edge_prefill(
    lm: LoadedModel, *, question: str, document: str, task: str = "extractive_qa", selector: str = "q2c"
) -> EdgeResult:
    """Tokenize, run the one scoring prefill of the full prompt (keeping its KV), and score the context.

    ValueError for an unknown task or selector, and for a prompt of fewer than two tokens (nothing to hand over).
    """
    sel = get_selector(selector) if isinstance(selector, str) else selector
    t0 = time.perf_counter()
    prompt = build_prompt(lm.tokenizer, question=question, context=document, task=task)
    t1 = time.perf_counter()
    if len(prompt.input_ids) < 2:
        raise ValueError("the prompt has fewer than two tokens")
    ctx = score_prompt(lm, prompt, [sel])
    t2 = time.perf_counter()
    scores = sel.score(ctx) if len(prompt.context) else torch.zeros(0)
    t3 = time.perf_counter()
    return EdgeResult(
        prompt=prompt,
        kv=ctx.kv,
        scores=scores,
        selector=sel,
        timings={"tokenize": t1 - t0, "prefill": t2 - t1, "score": t3 - t2},
    )


def answer_local(lm: LoadedModel, edge: EdgeResult, *, max_new_tokens: int = 32) -> Answer:
    """``local`` mode: the edge continues from the cache it already has (no second prefill, nothing sent)."""
    n = edge.prompt_tokens
    gen = generate_from_cache(
        lm, edge.handoff_kv(), edge.suffix_ids(), start_position=n - 1, max_new_tokens=max_new_tokens
    )
    t = gen.timings
    return _answer(gen, t.get("rebuild", 0.0) + t.get("suffix", 0.0), t.get("generate", 0.0))


# ----------------------------------------------------------------------------------------------------------------
# KV modes
# ----------------------------------------------------------------------------------------------------------------
def raw_kv_blob(edge: EdgeResult, model_fingerprint: str) -> bytes:
    """The hand-off cache as one 16-bit (bf16) ``scout-kv`` blob: what the selector stages in the edge store."""
    kv = edge.handoff_kv().to(dtype=WIRE_DTYPE)
    return encode_blob(kv, model_fingerprint=model_fingerprint, original_seq_len=edge.prompt_tokens - 1)


def visible_positions(cached: int, context_start: int, context_tokens: int, kept: np.ndarray) -> torch.Tensor:
    """Indices of a ``cached``-token hand-off cache that survive eviction: everything outside the context span
    ``[context_start, context_start + context_tokens)`` and the kept context positions (context-relative)."""
    end = context_start + context_tokens
    if context_start < 0 or context_tokens < 0 or end > cached:
        raise ValueError(f"context [{context_start}, {end}) does not lie within {cached} cached tokens")
    kept_t = torch.as_tensor(np.asarray(kept, dtype=np.int64))
    if kept_t.numel() and (int(kept_t.min()) < 0 or int(kept_t.max()) >= context_tokens):
        raise ValueError("kept positions out of the context's range")
    return torch.cat([torch.arange(context_start), kept_t + context_start, torch.arange(end, cached)])


@dataclass
class UplinkBlob:
    """What the quantizer produced: the blob that crosses the uplink, its cached token count, and the time."""

    data: bytes
    kept_tokens: int
    bit_plan: str
    seconds: float


def encode_uplink(
    raw: bytes,
    *,
    model_fingerprint: str,
    bit_plan: str,
    positions: bytes | None,
    context_start: int,
    context_tokens: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_context_tokens: int = 1 << 24,
) -> UplinkBlob:
    """Raw hand-off blob -> uplink blob: verify it, evict to the kept context positions (when ``positions`` is
    given), quantize per ``bit_plan`` (KIVI axes: keys per channel, values per token, groups of 32), encode.

    Raises `scout.codec.wire.BlobError` for a raw blob that does not verify (corrupt, or another model's), and
    ValueError for a plan, position set or context span that does not fit it.
    """
    t0 = time.perf_counter()
    decoded = decode_blob(raw, expected_fingerprint=model_fingerprint, max_bytes=max_bytes)
    orig = decoded.orig_seq_len
    if decoded.cache.seq_len != orig or not torch.equal(decoded.positions, torch.arange(orig)):
        raise ValueError("the raw KV must hold every hand-off token in order (it was pruned already)")
    kv = decoded.kvcache()
    if positions is not None:
        kept = decode_positions(positions, context_tokens, max_n=max_context_tokens, require_checksum=True)
        kv = kv.select(visible_positions(orig, context_start, context_tokens, kept))
    elif context_start + context_tokens > orig:
        raise ValueError(f"context [{context_start}, {context_start + context_tokens}) exceeds {orig} cached tokens")
    plan = parse_bit_plan(bit_plan)
    plan.validate(kv.num_layers)
    qc = quantize_cache(kv, plan, QuantSpec(plan.default))
    data = encode_blob(qc, model_fingerprint=model_fingerprint, original_seq_len=orig, meta={"bit_plan": bit_plan})
    return UplinkBlob(data=data, kept_tokens=kv.seq_len, bit_plan=bit_plan, seconds=time.perf_counter() - t0)


def _check_suffix(lm: LoadedModel, suffix_ids: Sequence[int]) -> list[int]:
    ids = [int(t) for t in suffix_ids]
    if not ids:
        raise ValueError("at least one suffix token (the prompt's last) is needed")
    if any(t < 0 or t >= lm.spec.vocab_size for t in ids):
        raise ValueError(f"suffix token ids must lie in [0, {lm.spec.vocab_size})")
    return ids


def answer_from_blob(
    lm: LoadedModel,
    blob: bytes,
    *,
    suffix_ids: Sequence[int],
    max_new_tokens: int = 32,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Answer:
    """Cloud side of the KV modes: verify (checksum, and the fingerprint against this model), dequantize,
    rebuild, feed ``suffix_ids`` right after the hand-off prompt, generate.

    Raises `BlobError` (`BlobChecksumError`, `BlobFingerprintError`, …) for a blob this model must not decode, and
    ValueError for suffix ids outside the vocabulary.
    """
    ids = _check_suffix(lm, suffix_ids)
    t0 = time.perf_counter()
    decoded = decode_blob(blob, expected_fingerprint=lm.spec.fingerprint, max_bytes=max_bytes)
    if decoded.cache.num_layers != lm.spec.num_layers:
        raise ValueError(f"blob has {decoded.cache.num_layers} layers, the model {lm.spec.num_layers}")
    kv = decoded.kvcache()
    verify_s = time.perf_counter() - t0
    gen = generate_from_cache(lm, kv, ids, start_position=decoded.orig_seq_len, max_new_tokens=max_new_tokens)
    t = gen.timings
    return _answer(gen, verify_s + t.get("rebuild", 0.0) + t.get("suffix", 0.0), t.get("generate", 0.0))


# ----------------------------------------------------------------------------------------------------------------
# scout / text modes
# ----------------------------------------------------------------------------------------------------------------
def same_tokenizer(edge: ModelSpec, cloud: ModelSpec) -> bool:
    """Whether a position index means the same text at both ends (equal tokenizer fingerprints)."""
    return bool(edge.tokenizer_fingerprint) and edge.tokenizer_fingerprint == cloud.tokenizer_fingerprint


def answer_from_document(
    lm: LoadedModel,
    *,
    question: str,
    document: str,
    task: str = "extractive_qa",
    positions: bytes | None = None,
    context_tokens: int | None = None,
    edge_tokenizer: Any = None,
    max_new_tokens: int = 32,
    max_context_tokens: int = 1 << 24,
) -> Answer:
    """Cloud side of ``text`` (``positions=None``: full prefill) and ``scout`` (re-read the prompt seeing only the
    kept context positions, at their original position ids: the `drop` application, which prefills the visible
    tokens alone, so the cloud's cost shrinks with the retention).

    ``context_tokens`` is the edge's context length the set was encoded against. ``edge_tokenizer`` (when the
    edge model tokenizes differently) maps the edge's positions onto this model's tokens by character spans;
    without it the two tokenizations must agree in length, else ValueError.
    """
    t0 = time.perf_counter()
    prompt = build_prompt(lm.tokenizer, question=question, context=document, task=task)
    if positions is None:
        gen = generate(lm, prompt.input_ids, max_new_tokens=max_new_tokens)
        t = gen.timings
        return _answer(gen, time.perf_counter() - t0 - sum(t.values()) + t["prefill"], t["generate"])
    if context_tokens is None:
        raise ValueError("scout mode needs the edge's context length")
    kept = decode_positions(positions, context_tokens, max_n=max_context_tokens, require_checksum=True)
    if edge_tokenizer is not None:
        edge_prompt = build_prompt(edge_tokenizer, question=question, context=document, task=task)
        if len(edge_prompt.context) != context_tokens:
            raise ValueError(
                f"the edge tokenizes this document into {len(edge_prompt.context)} context tokens, "
                f"the position set says {context_tokens}"
            )
        kept = align_positions(edge_prompt.context_offsets, kept, prompt.context_offsets)
    elif len(prompt.context) != context_tokens:
        raise ValueError(
            f"the position set is over {context_tokens} context tokens but this model reads {len(prompt.context)} "
            "(a different tokenizer: the decoder needs the edge's tokenizer to align them)"
        )
    gen = apply_selection(lm, prompt, kept, how="drop", max_new_tokens=max_new_tokens)
    t = gen.timings
    return _answer(gen, time.perf_counter() - t0 - sum(t.values()) + t["prefill"], t["generate"])


# ----------------------------------------------------------------------------------------------------------------
# the in-process path
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class InProcessAnswer:
    """`answer_inprocess`'s result: what a service request's `AskReply` carries, computed in one process."""

    answer: str
    mode: str
    retention: float
    bit_plan: str
    bytes_sent: int
    answered_by: str
    plan: Plan
    token_ids: list[int]
    timings: dict[str, float]


def answer_inprocess(
    edge_lm: LoadedModel,
    cloud_lm: LoadedModel,
    *,
    question: str,
    document: str,
    task: str = "extractive_qa",
    mode: str | None = None,
    retention: float | None = None,
    selector: str = "q2c",
    deadline_s: float = 30.0,
    bandwidth_bps: float = 100e6,
    policy: PolicyConfig | None = None,
    max_new_tokens: int = 32,
) -> InProcessAnswer:
    """Answer one request with every role's computation in this process, handing bytes over in memory.

    The same functions, in the same order, on the same bytes as the services: the answer equals the services'
    answer for the same request, plan and models (the end-to-end tests hold the two equal).
    """
    t_start = time.perf_counter()
    edge = edge_prefill(edge_lm, question=question, document=document, task=task, selector=selector)
    timings = dict(edge.timings)
    t0 = time.perf_counter()
    policy = policy or PolicyConfig.for_model(edge_lm.spec)
    plan = plan_request(
        policy,
        context_tokens=edge.context_tokens,
        extra_tokens=edge.extra_tokens,
        deadline_s=deadline_s,
        elapsed_s=t0 - t_start,
        bandwidth_bps=bandwidth_bps,
        mode=mode,
        retention=retention,
    )
    timings["plan"] = time.perf_counter() - t0
    r = plan.retention
    if plan.mode == "local":
        ans = answer_local(edge_lm, edge, max_new_tokens=max_new_tokens)
        sent, by = 0, "edge"
    elif plan.mode in KV_MODES:
        raw = raw_kv_blob(edge, edge_lm.spec.fingerprint)
        up = encode_uplink(
            raw,
            model_fingerprint=edge_lm.spec.fingerprint,
            bit_plan=plan.bit_plan,
            positions=edge.position_set(r) if r < 1.0 else None,
            context_start=edge.context_start,
            context_tokens=edge.context_tokens,
        )
        timings["encode"] = up.seconds
        ans = answer_from_blob(cloud_lm, up.data, suffix_ids=edge.suffix_ids(), max_new_tokens=max_new_tokens)
        sent, by = uplink_payload_bytes(plan.mode, blob_bytes=len(up.data)), "cloud"
    else:
        positions = edge.position_set(r) if plan.mode == "scout" else None
        ans = answer_from_document(
            cloud_lm,
            question=question,
            document=document,
            task=task,
            positions=positions,
            context_tokens=edge.context_tokens,
            edge_tokenizer=None if same_tokenizer(edge_lm.spec, cloud_lm.spec) else edge_lm.tokenizer,
            max_new_tokens=max_new_tokens,
        )
        sent, by = uplink_payload_bytes(plan.mode, positions=positions, question=question), "cloud"
    timings.update(ans.timings)
    timings["total"] = time.perf_counter() - t_start
    return InProcessAnswer(
        answer=ans.answer,
        mode=plan.mode,
        retention=r,
        bit_plan=plan.bit_plan,
        bytes_sent=sent,
        answered_by=by,
        plan=plan,
        token_ids=ans.token_ids,
        timings=timings,
    )
