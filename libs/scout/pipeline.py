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
2. [transport policy] `plan_request`: the planner (`scout.policy.planner.plan`) over an operating-point table when
   one is configured; otherwise the threshold rule documented at `threshold_plan`; a mode forced by the request
   wins either way (`forced_plan`).
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

What counts as "bytes sent" (`uplink_payload_bytes`): the content this request puts on the uplink. KV modes: the
blob. Scout: the position set, the question and the 32-byte document reference. Text: question and reference.
Local: nothing. Not counted: the fixed message envelope (ids, reply subject, trace context; a few hundred bytes of
JSON in every mode) and the document itself, which is content-addressed and uploaded once, not per request.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from scout.codec.quant import BitPlan, QuantSpec, quantize_cache
from scout.codec.wire import DEFAULT_MAX_BYTES, decode_blob, encode_blob
from scout.inference import Generation, generate, generate_from_cache
from scout.kvcache import KVCache
from scout.metrics import clean_generation
from scout.positions import align_positions, decode_positions, encode_positions
from scout.prompts import Prompt, build_prompt
from scout.selection import apply_selection, get_selector, score_prompt

if TYPE_CHECKING:
    from scout.models import LoadedModel, ModelSpec
    from scout.policy.operating_points import OperatingPointTable, SizeModel
    from scout.policy.planner import Plan, StageTimes
    from scout.selection.base import Selector

__all__ = [
    "DEFAULT_MIXED_PLAN",
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

MODES: tuple[str, ...] = ("full", "int8", "int4", "mixed", "scout", "text", "local")
KV_MODES: frozenset[str] = frozenset({"full", "int8", "int4", "mixed"})
DOCUMENT_REF_BYTES = 32
"""A document reference is a SHA-256: 32 bytes of content (its hex spelling in JSON is envelope)."""
WIRE_DTYPE = torch.bfloat16
"""KV crosses the uplink (and is staged on the edge) in bf16 whatever the model's compute dtype (``full`` mode)."""
DEFAULT_MIXED_PLAN = "mixed:0=16"
"""The study's "mixed INT4": every layer at 4 bits except the bottleneck layer 0 at 16. A calibrated plan
(``scout codec calibrate``, ``reports/plans/*.json``) replaces it per model."""

_BIT_PLAN_RE = re.compile(r"mixed:((?:\d{1,4}=(?:2|4|8|16))(?:,\d{1,4}=(?:2|4|8|16))*)?")
_UNIFORM_PLANS: dict[str, int] = {"bf16": 16, "fp16": 16, "16": 16, "int8": 8, "int4": 4, "int2": 2}


# ----------------------------------------------------------------------------------------------------------------
# bit plans by name (what `Plan.bit_plan` carries)
# ----------------------------------------------------------------------------------------------------------------
def parse_bit_plan(name: str) -> BitPlan:
    """The `BitPlan` a plan names: ``bf16`` (16 bits), ``int8``, ``int4``, ``int2``, or ``mixed:<layer>=<bits>,…``
    (4 bits by default, the listed layers at their bits). ValueError for anything else."""
    if not isinstance(name, str):
        raise ValueError("a bit plan name must be a string")
    if name in _UNIFORM_PLANS:
        return BitPlan.uniform(_UNIFORM_PLANS[name])
    m = _BIT_PLAN_RE.fullmatch(name)
    if m is None:
        raise ValueError(f"unknown bit plan {name[:80]!r}: use bf16, int8, int4, int2 or mixed:<layer>=<bits>,…")
    overrides: dict[int, int] = {}
    for item in (m.group(1) or "").split(","):
        if item:
            layer, bits = item.split("=")
            if int(layer) in overrides:
                raise ValueError(f"bit plan {name[:80]!r} names layer {int(layer)} twice")
            overrides[int(layer)] = int(bits)
    return BitPlan(4, overrides)


def bit_plan_name(plan: BitPlan) -> str:
    """The inverse of `parse_bit_plan` for uniform and 4-bit-default plans."""
    if not plan.overrides:
        for name, bits in _UNIFORM_PLANS.items():
            if bits == plan.default and name not in ("fp16", "16"):
                return name
    if plan.default != 4:
        raise ValueError(f"only 4-bit-default mixed plans have a name, got default {plan.default}")
    return "mixed:" + ",".join(f"{k}={v}" for k, v in sorted(plan.overrides.items()))


def bit_plan_for(mode: str, mixed_plan: str = DEFAULT_MIXED_PLAN) -> str:
    """The plan name of a mode: ``bf16`` for full, ``int8``/``int4``, the configured mixed plan, ``positions`` for
    scout, ``none`` for text and local (the names `scout.policy.operating_points` uses)."""
    table = {"full": "bf16", "int8": "int8", "int4": "int4", "mixed": mixed_plan, "scout": "positions"}
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    return table.get(mode, "none")


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
        kept = decode_positions(positions, context_tokens, max_n=max_context_tokens)
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
    kept = decode_positions(positions, context_tokens, max_n=max_context_tokens)
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


def uplink_payload_bytes(mode: str, *, blob_bytes: int = 0, positions: bytes | None = None, question: str = "") -> int:
    """Bytes this request puts on the uplink, by the definition in the module docstring."""
    if mode in KV_MODES:
        return int(blob_bytes)
    if mode == "scout":
        return len(positions or b"") + len(question.encode("utf-8")) + DOCUMENT_REF_BYTES
    if mode == "text":
        return len(question.encode("utf-8")) + DOCUMENT_REF_BYTES
    if mode == "local":
        return 0
    raise ValueError(f"unknown mode {mode!r}")


# ----------------------------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyConfig:
    """What the transport policy plans with.

    ``table`` (+ ``stages``): the operating points ``scout eval`` measured; with a table, `plan_request` runs the
    deadline planner. ``sizes``: ``mode -> (plan name, size model)`` from the codec for the edge model's geometry
    (`for_model`); the threshold rule and forced modes size their transfers with it. ``scout_retention`` is the
    retention of scout mode when nothing else says; ``transfer_fraction`` the share of the remaining deadline the
    threshold rule lets the transfer take (the rest is for compute it does not model).
    """

    table: OperatingPointTable | None = None
    stages: StageTimes | None = None
    sizes: Mapping[str, tuple[str, SizeModel]] = field(default_factory=dict)
    mixed_plan: str = DEFAULT_MIXED_PLAN
    scout_retention: float = 0.5
    transfer_fraction: float = 0.5
    threshold_modes: tuple[str, ...] = ("full", "int8", "mixed", "int4")

    def __post_init__(self) -> None:
        parse_bit_plan(self.mixed_plan)
        if not 0 < self.scout_retention <= 1:
            raise ValueError(f"scout_retention must be in (0, 1], got {self.scout_retention}")
        if not 0 < self.transfer_fraction <= 1:
            raise ValueError(f"transfer_fraction must be in (0, 1], got {self.transfer_fraction}")
        unknown = [m for m in self.threshold_modes if m not in KV_MODES]
        if unknown:
            raise ValueError(f"threshold_modes must be KV modes, got {unknown}")

    @classmethod
    def for_model(cls, spec: ModelSpec, *, mixed_plan: str = DEFAULT_MIXED_PLAN, **options: Any) -> PolicyConfig:
        """Sizes from the codec for ``spec``'s KV geometry at the wire's bf16 (see `codec_size_models`)."""
        from scout.policy.operating_points import KVGeometry, codec_size_models

        plan = parse_bit_plan(mixed_plan)
        plan.validate(spec.num_layers)
        geometry = KVGeometry(num_layers=spec.num_layers, kv_heads=spec.num_kv_heads, head_dim=spec.head_dim)
        sizes = codec_size_models(geometry, mixed_overrides=dict(plan.overrides) or None)
        # A mixed plan without overrides is plain int4 under the mixed name: size it as int4.
        sizes["mixed"] = (mixed_plan, sizes.get("mixed", sizes["int4"])[1])
        return cls(sizes=sizes, mixed_plan=mixed_plan, **options)

    def default_retention(self, mode: str) -> float:
        return self.scout_retention if mode == "scout" else 1.0

    def size_bytes(self, mode: str, context_tokens: int, retention: float, extra_tokens: int = 0) -> int | None:
        """Bytes of ``mode`` at ``retention`` from the table's point or the codec sizes; None if neither knows.

        ``extra_tokens``: the hand-off cache's tokens outside the context, which KV modes carry in full.
        """
        if self.table is not None:
            try:
                return self.table.get(mode, retention).bytes_for(context_tokens, extra_tokens)
            except (KeyError, ValueError):
                pass
        if mode in self.sizes:
            return self.sizes[mode][1].size_bytes(context_tokens, retention, extra_tokens)
        return 0 if mode == "local" else None


def _planner_plan(**fields: Any) -> Plan:
    from scout.policy.planner import Plan

    return Plan(**fields)


def _transfer_s(nbytes: int, bandwidth_bps: float) -> float:
    if nbytes == 0:
        return 0.0
    return math.inf if bandwidth_bps <= 0 else 8.0 * nbytes / bandwidth_bps


def forced_plan(
    policy: PolicyConfig,
    *,
    mode: str,
    retention: float | None,
    context_tokens: int,
    deadline_s: float,
    bandwidth_bps: float,
    model_pair: str | None = None,
    request_id: str = "",
    extra_tokens: int = 0,
) -> Plan:
    """The plan for a mode the request forces: sized, timed at the estimated rate, judged against the deadline."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    r = policy.default_retention(mode) if retention is None else float(retention)
    if mode in ("text", "local"):
        r = 1.0
    nbytes = policy.size_bytes(mode, context_tokens, r, extra_tokens) or 0
    bit_plan = bit_plan_for(mode, policy.mixed_plan)
    quality, compute, pair = math.nan, 0.0, model_pair or ""
    if policy.table is not None:
        try:
            point = policy.table.get(mode, r, model_pair)
            quality, pair, bit_plan = policy.table.relative_quality(point), point.model_pair, point.plan or bit_plan
        except (KeyError, ValueError):
            pass
    if policy.stages is not None and mode in policy.stages.modes:
        ms = policy.stages.for_mode(mode)
        compute = ms.before_transfer_s(context_tokens) + ms.after_transfer_s(context_tokens)
    transfer = _transfer_s(nbytes, bandwidth_bps)
    total = compute + transfer
    feasible = total <= deadline_s
    return _planner_plan(
        request_id=request_id,
        model_pair=pair,
        mode=mode,
        retention=r,
        point=mode if r == 1.0 else f"{mode}@{r:g}",
        bit_plan=bit_plan,
        bytes=nbytes,
        expected_quality=quality,
        expected_time_s=total,
        compute_s=compute,
        transfer_s=transfer,
        deadline_s=deadline_s,
        bandwidth_bps=bandwidth_bps,
        feasible=feasible,
        fallback=False,
        reason=f"mode {mode} forced by the request ({nbytes} B, {'meets' if feasible else 'misses'} the deadline)",
    )


def threshold_plan(
    policy: PolicyConfig,
    *,
    context_tokens: int,
    deadline_s: float,
    bandwidth_bps: float,
    model_pair: str | None = None,
    request_id: str = "",
    extra_tokens: int = 0,
) -> Plan:
    """The rule used until an operating-point table is configured (same `Plan` interface as the planner).

    The transfer may take ``transfer_fraction`` of the remaining deadline. The first of ``threshold_modes``
    (quality order: full, int8, mixed, int4) whose codec-exact size crosses the uplink within that budget at the
    estimated rate is chosen; so each KV mode has a rate threshold ``8 * bytes / budget`` that scales with the
    context length and the deadline. Below int4's threshold: ``scout`` at ``scout_retention`` (hundreds of
    bytes). No uplink at all (rate 0): ``local``. Expected quality is unknown without a table (NaN).
    """
    budget = policy.transfer_fraction * deadline_s

    def plan_for(mode: str, retention: float, nbytes: int, fallback: bool, why: str) -> Plan:
        transfer = _transfer_s(nbytes, bandwidth_bps)
        return _planner_plan(
            request_id=request_id,
            model_pair=model_pair or "",
            mode=mode,
            retention=retention,
            point=mode if retention == 1.0 else f"{mode}@{retention:g}",
            bit_plan=bit_plan_for(mode, policy.mixed_plan),
            bytes=nbytes,
            expected_quality=math.nan,
            expected_time_s=transfer,
            compute_s=0.0,
            transfer_s=transfer,
            deadline_s=deadline_s,
            bandwidth_bps=bandwidth_bps,
            feasible=transfer <= budget,
            fallback=fallback,
            reason=f"threshold rule (no operating-point table): {why}",
        )

    rate = f"{bandwidth_bps / 1e6:.3g} Mbit/s"
    if bandwidth_bps <= 0:
        return plan_for("local", 1.0, 0, True, "no uplink (rate 0): the edge answers")
    for mode in policy.threshold_modes:
        if mode not in policy.sizes:
            continue
        nbytes = policy.sizes[mode][1].size_bytes(context_tokens, 1.0, extra_tokens)
        if _transfer_s(nbytes, bandwidth_bps) <= budget:
            return plan_for(mode, 1.0, nbytes, False, f"{mode} ({nbytes} B) crosses {rate} within {budget:.3f} s")
    r = policy.scout_retention
    nbytes = policy.size_bytes("scout", context_tokens, r) or 0
    why = f"no KV mode crosses {rate} within {budget:.3f} s; scout@{r:g} sends {nbytes} B"
    return plan_for("scout", r, nbytes, False, why)


def plan_request(
    policy: PolicyConfig,
    *,
    context_tokens: int,
    deadline_s: float,
    bandwidth_bps: float,
    elapsed_s: float = 0.0,
    mode: str | None = None,
    retention: float | None = None,
    model_pair: str | None = None,
    request_id: str = "",
    extra_tokens: int = 0,
) -> Plan:
    """The transport policy's decision for one request (see the module docstring, step 2).

    ``deadline_s`` is the request's whole deadline; ``elapsed_s`` what the edge already spent (the planner gets
    the remainder, at least 1 ms so an overdue request still gets a plan: its fallback). ``extra_tokens``: the
    hand-off cache's tokens outside the context (``prompt_tokens - 1 - context_tokens``), sent in full by KV
    modes; without them a plan under-sizes every KV transfer by the instruction and the question.
    """
    remaining = max(deadline_s - elapsed_s, 1e-3)
    common = {
        "context_tokens": context_tokens,
        "deadline_s": remaining,
        "bandwidth_bps": bandwidth_bps,
        "extra_tokens": extra_tokens,
    }
    if mode is not None:
        return forced_plan(
            policy, mode=mode, retention=retention, model_pair=model_pair, request_id=request_id, **common
        )
    if policy.table is not None:
        from scout.policy.planner import PlanRequest as PlannerRequest
        from scout.policy.planner import StageTimes, plan

        pair = policy.table.resolve_pair(model_pair)
        modes = {p.mode for p in policy.table.for_pair(pair)}
        stages = policy.stages or StageTimes.transfer_only(pair, modes)
        request = PlannerRequest(
            context_tokens=context_tokens,
            deadline_s=remaining,
            model_pair=pair,
            request_id=request_id,
            extra_tokens=extra_tokens,
        )
        return plan(request, bandwidth_bps, policy.table, stages)
    return threshold_plan(policy, model_pair=model_pair, request_id=request_id, **common)


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
