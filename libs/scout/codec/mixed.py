"""Per-layer precision plans ("mixed INT4") and the calibration that finds a model's bottleneck layers.

Why: the source study found that Qwen2.5-7B's INT4 loss came almost entirely from one layer (layer 0), and that
keeping that layer at 16 bits recovered most of the quality for about 4 % more bytes. Which layers are fragile is
a property of the model *and* of the quantizer (per-token quantization of keys suffers from outlier channels
that per-channel KIVI quantization absorbs), so Scout measures it instead of assuming it:

1. Every calibration prompt is prefilled once (the edge's hand-off: the prompt minus its last token). Its cache is
   reconstructed once at `low_bits` (and at `high_bits` when that is below 16); every later trial only *selects*
   per layer between those reconstructions, so no layer is quantized twice.
2. Damage = KL(full-precision || trial) of the next-token distributions at several positions of the answer
   region: the last prompt token is fed, followed by a few teacher-forced answer tokens (the model's own greedy
   answer from the full-precision cache, or gold tokens), each predicting the next one. Trials are batched: one
   forward pass holds a full-precision reference row and up to `batch_size` trial rows that differ only in which
   layers are low, so a prompt costs one prefill plus a handful of short batched decodes.
3. Sensitivity of layer l = damage with *only* layer l at low bits (others high). Layers are ranked by it.
4. Damage is not additive (the sum of single-layer KLs is not the all-low KL, and a plan's KL is not the all-low KL
   minus the protected layers' singles), so the plan is chosen by measuring combined plans: protect the k most
   sensitive layers for k = 0, 1, 2, … and take the smallest k whose *measured* mean KL meets the target. With
   examples, greedy answers are also scored (SQuAD/TriviaQA F1) per layer and for the plan, and an optional
   relative-F1 target extends the protected set further along the ranking.

A plan is saved as JSON with the model fingerprint and the calibration evidence; a plan made for another model
is refused on load (`PlanFingerprintError`), because layer indices mean nothing across models.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scout.codec.quant import (
    PLAN_BITS,
    QUANT_BITS,
    BitPlan,
    QuantizedCache,
    QuantSpec,
    dequantize_cache,
    estimate_bytes,
    quantize_cache,
)
from scout.kvcache import KVCache

if TYPE_CHECKING:
    from scout.datasets import Example
    from scout.models import LoadedModel
    from scout.prompts import Prompt

PLAN_FORMAT = "scout-bitplan"
PLAN_VERSION = 1
DEFAULT_KL_TARGET = 0.01
"""Default quality target: mean next-token KL divergence (nats) of the chosen plan against full precision.

For scale, measured here on SQuAD v2 prompts: uniform KIVI INT4 costs SmolLM2-135M about 0.01-0.02 nats and the
Qwen2.5-Coder pair 0.001-0.01; per-token symmetric INT4 (the study's quantizer) costs them 0.06-0.55. A
plan at 0.01 nats rarely changes a greedy answer token."""
BYTES_REFERENCE_TOKENS = 1024
"""Context length at which plans' byte costs are reported (channel-axis groups make bytes/token depend on it)."""


class PlanFormatError(ValueError):
    """A plan file is not a valid scout-bitplan document."""


class PlanFingerprintError(PlanFormatError):
    """A plan was calibrated for a different model than the one it is being used with."""


# ----------------------------------------------------------------------------------------------------------------
# plans
# ----------------------------------------------------------------------------------------------------------------
def spec_to_json(spec: QuantSpec) -> dict[str, Any]:
    return {
        "bits": spec.bits,
        "axis_k": spec.axis_k,
        "axis_v": spec.axis_v,
        "group_size": spec.group_size,
        "symmetric": spec.symmetric,
    }


def spec_from_json(obj: Any) -> QuantSpec:
    if not isinstance(obj, dict) or set(obj) != {"bits", "axis_k", "axis_v", "group_size", "symmetric"}:
        raise PlanFormatError("quant: expected keys bits, axis_k, axis_v, group_size, symmetric")
    try:
        return QuantSpec(**obj)
    except (TypeError, ValueError) as e:
        raise PlanFormatError(f"quant: {e}") from None


@dataclass(frozen=True)
class MixedPlan:
    """A bit plan bound to the model it was made for, the quantizer it was calibrated with, and its evidence.

    `spec` carries the axes, group size and symmetry; its `bits` is set to the plan's default width. `evidence` is
    the calibration record (per-layer table, protection curve, targets) so that a plan file explains itself.
    """

    plan: BitPlan
    spec: QuantSpec
    model_fingerprint: str
    num_layers: int
    model_name: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model_fingerprint, str) or not self.model_fingerprint:
            raise ValueError("MixedPlan: model_fingerprint must be a non-empty string")
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ValueError(f"MixedPlan: num_layers must be a positive int, got {self.num_layers!r}")
        self.plan.validate(self.num_layers)
        if self.spec.bits != self.plan.default:
            object.__setattr__(self, "spec", _with_bits(self.spec, self.plan.default))

    @property
    def per_layer(self) -> list[int]:
        return self.plan.per_layer(self.num_layers)

    @property
    def protected(self) -> list[int]:
        """Layers kept at more bits than the plan's default."""
        return sorted(layer for layer, bits in self.plan.overrides.items() if bits > self.plan.default)

    def check_model(self, fingerprint: str) -> None:
        if fingerprint != self.model_fingerprint:
            raise PlanFingerprintError(
                f"plan is for model {self.model_fingerprint} ({self.model_name or 'unnamed'}), not {fingerprint}"
            )

    def quantize(self, kv: KVCache) -> QuantizedCache:
        """Quantize a cache with this plan (the layer count must match the plan's model)."""
        if kv.num_layers != self.num_layers:
            raise ValueError(f"plan has {self.num_layers} layers, cache has {kv.num_layers}")
        return quantize_cache(kv, self.plan, self.spec)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": {"fingerprint": self.model_fingerprint, "name": self.model_name, "num_layers": self.num_layers},
            "plan": {
                "default": self.plan.default,
                "overrides": {str(k): v for k, v in sorted(self.plan.overrides.items())},
                "per_layer": self.per_layer,
            },
            "quant": spec_to_json(self.spec),
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_json(cls, obj: Any, *, expected_fingerprint: str | None) -> MixedPlan:
        """Parse and validate a plan document; `expected_fingerprint=None` only to inspect a plan offline."""
        if not isinstance(obj, dict):
            raise PlanFormatError("plan document must be a JSON object")
        if obj.get("format") != PLAN_FORMAT:
            raise PlanFormatError(f"not a {PLAN_FORMAT} document (format {str(obj.get('format'))[:40]!r})")
        if obj.get("version") != PLAN_VERSION:
            raise PlanFormatError(f"unsupported plan version {obj.get('version')!r}; this reader knows {PLAN_VERSION}")
        model, plan, quant = obj.get("model"), obj.get("plan"), obj.get("quant")
        if not isinstance(model, dict) or not isinstance(model.get("fingerprint"), str):
            raise PlanFormatError("model.fingerprint missing")
        if expected_fingerprint is not None and model["fingerprint"] != expected_fingerprint:
            raise PlanFingerprintError(
                f"plan is for model {model['fingerprint']} ({model.get('name') or 'unnamed'}), "
                f"not {expected_fingerprint}"
            )
        num_layers = model.get("num_layers")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise PlanFormatError("model.num_layers must be a positive integer")
        if not isinstance(plan, dict) or set(plan) != {"default", "overrides", "per_layer"}:
            raise PlanFormatError("plan: expected keys default, overrides, per_layer")
        overrides = plan["overrides"]
        if not isinstance(overrides, dict) or not all(isinstance(k, str) and k.isdigit() for k in overrides):
            raise PlanFormatError("plan.overrides must map layer numbers (strings of digits) to bits")
        try:
            bitplan = BitPlan(plan["default"], {int(k): v for k, v in overrides.items()})
            per_layer = bitplan.per_layer(num_layers)
        except ValueError as e:
            raise PlanFormatError(f"plan: {e}") from None
        if plan["per_layer"] != per_layer:
            raise PlanFormatError("plan.per_layer disagrees with default + overrides")
        evidence = obj.get("evidence", {})
        if not isinstance(evidence, dict):
            raise PlanFormatError("evidence must be a JSON object")
        return cls(
            plan=bitplan,
            spec=spec_from_json(quant),
            model_fingerprint=model["fingerprint"],
            num_layers=num_layers,
            model_name=str(model.get("name") or ""),
            evidence=evidence,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, *, expected_fingerprint: str | None) -> MixedPlan:
        """Read a plan file. A plan for another model fingerprint raises PlanFingerprintError.

        `expected_fingerprint` is required on purpose: pass the model's `spec.fingerprint`, or None explicitly
        to inspect a file without a model.
        """
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PlanFormatError(f"{path}: not JSON ({e.msg})") from None
        return cls.from_json(obj, expected_fingerprint=expected_fingerprint)


def _with_bits(spec: QuantSpec, bits: int) -> QuantSpec:
    return QuantSpec(bits, spec.axis_k, spec.axis_v, spec.group_size, spec.symmetric)


def study_spec(bits: int, head_dim: int) -> QuantSpec:
    """The source study's quantizer: per-token symmetric absmax over the whole head_dim, keys and values alike."""
    return QuantSpec(bits, axis_k="token", axis_v="token", group_size=head_dim, symmetric=True)


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
class _Sources:
    """Per-layer stacks of a prompt's cache reconstructions: keys[l] is [n_sources, kv_heads, seq, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    positions: torch.Tensor


def _sources(kv: KVCache, reconstructions: Sequence[KVCache]) -> _Sources:
    caches = [kv, *reconstructions]
    return _Sources(
        keys=[torch.stack([c.keys[i] for c in caches]) for i in range(kv.num_layers)],
        values=[torch.stack([c.values[i] for c in caches]) for i in range(kv.num_layers)],
        positions=kv.positions,
    )


def _batched_cache(lm: LoadedModel, src: _Sources, rows: torch.Tensor) -> Any:
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
def _forward_rows(lm: LoadedModel, src: _Sources, rows: torch.Tensor, suffix: Sequence[int]) -> torch.Tensor:
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


def _evaluate(
    lm: LoadedModel,
    prepared: Sequence[CalibrationPrompt],
    sources: Sequence[_Sources],
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
    lm: LoadedModel, src: _Sources, rows: torch.Tensor, last_token: int, max_new_tokens: int
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


def _f1_of_variants(
    lm: LoadedModel,
    examples: Sequence[Example],
    ex_prepared: Sequence[CalibrationPrompt],
    ex_sources: Sequence[_Sources],
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


# ----------------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class LayerSensitivity:
    """Damage with only this layer at low bits (all others high), over the calibration prompts."""

    layer: int
    kl_mean: float
    kl_max: float
    top1_agreement: float
    rank: int = 0
    f1: float | None = None
    kl_per_prompt: list[float] = field(default_factory=list)


@dataclass
class CurvePoint:
    """A measured combined plan: the `k` most sensitive layers protected, the rest at low bits."""

    k: int
    protected: list[int]
    kl_mean: float
    top1_agreement: float
    bytes_at_reference: int
    f1: float | None = None


@dataclass
class CalibrationResult:
    """The per-layer table, the measured protection curve, and the chosen plan with its evidence."""

    model_name: str
    model_fingerprint: str
    num_layers: int
    spec: QuantSpec
    low_bits: int
    high_bits: int
    quality_target: float
    f1_target: float | None
    layers: list[LayerSensitivity]
    curve: list[CurvePoint]
    plan: BitPlan
    protected: list[int]
    plan_kl: float
    uniform_low_kl: float
    int8_kl: float | None
    meets_target: bool
    n_prompts: int
    scored_positions: int
    answer_source: str
    f1_full: float | None = None
    f1_uniform_low: float | None = None
    f1_plan: float | None = None
    n_examples: int = 0
    seconds: float = 0.0
    bytes: dict[str, int] = field(default_factory=dict)

    @property
    def ranking(self) -> list[int]:
        """Layers, most sensitive first."""
        return [row.layer for row in sorted(self.layers, key=lambda r: r.rank)]

    def bottlenecks(self, top: int = 3) -> list[LayerSensitivity]:
        """The `top` most sensitive layers (by mean single-layer KL)."""
        return sorted(self.layers, key=lambda r: r.rank)[:top]

    def mixed_plan(self) -> MixedPlan:
        return MixedPlan(
            plan=self.plan,
            spec=_with_bits(self.spec, self.low_bits),
            model_fingerprint=self.model_fingerprint,
            num_layers=self.num_layers,
            model_name=self.model_name,
            evidence=self.to_json(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "low_bits": self.low_bits,
            "high_bits": self.high_bits,
            "quant": spec_to_json(self.spec),
            "quality_target_kl": self.quality_target,
            "f1_target": self.f1_target,
            "meets_target": self.meets_target,
            "protected": self.protected,
            "plan_kl": self.plan_kl,
            "uniform_low_kl": self.uniform_low_kl,
            "int8_kl": self.int8_kl,
            "n_prompts": self.n_prompts,
            "scored_positions": self.scored_positions,
            "answer_source": self.answer_source,
            "n_examples": self.n_examples,
            "f1_full": self.f1_full,
            "f1_uniform_low": self.f1_uniform_low,
            "f1_plan": self.f1_plan,
            "bytes_at_reference_tokens": {"tokens": BYTES_REFERENCE_TOKENS, **self.bytes},
            "ranking": self.ranking,
            "layers": [
                {
                    "layer": r.layer,
                    "rank": r.rank,
                    "kl_mean": r.kl_mean,
                    "kl_max": r.kl_max,
                    "top1_agreement": r.top1_agreement,
                    "f1": r.f1,
                    "kl_per_prompt": r.kl_per_prompt,
                }
                for r in self.layers
            ],
            "curve": [
                {
                    "k": c.k,
                    "protected": c.protected,
                    "kl_mean": c.kl_mean,
                    "top1_agreement": c.top1_agreement,
                    "bytes_at_reference_tokens": c.bytes_at_reference,
                    "f1": c.f1,
                }
                for c in self.curve
            ],
            "seconds": round(self.seconds, 2),
        }


# ----------------------------------------------------------------------------------------------------------------
# the plan search (pure: the measurement is a callback, so the logic is testable without a model)
# ----------------------------------------------------------------------------------------------------------------
def search_prefix(
    ranking: Sequence[int],
    measure: Callable[[list[int]], list[float]],
    target: float,
    *,
    chunk: int = 8,
) -> tuple[int, dict[int, float]]:
    """Smallest k such that protecting ranking[:k] measures <= target, evaluating k = 0, 1, … in chunks.

    `measure(ks)` returns the measured damage of each prefix length in `ks` (one batched evaluation per chunk,
    because that is how the model computes them). Damage need not be additive or even monotone in k: only
    measured values decide. Returns (k, {k: damage measured}); k = len(ranking) with no qualifying prefix (the
    caller reports the target as not met).
    """
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    measured: dict[int, float] = {}
    n = len(ranking)
    for start in range(0, n + 1, chunk):
        ks = list(range(start, min(start + chunk, n + 1)))
        values = measure(ks)
        if len(values) != len(ks):
            raise ValueError("measure must return one value per k")
        measured.update(zip(ks, (float(v) for v in values), strict=True))
        for k in ks:
            if measured[k] <= target:
                return k, measured
    return n, measured


def _bytes_for(lm: LoadedModel, plan: BitPlan, spec: QuantSpec) -> int:
    s = lm.spec
    return estimate_bytes(
        s.num_layers,
        s.num_kv_heads,
        BYTES_REFERENCE_TOKENS,
        s.head_dim,
        plan,
        spec,
        raw_itemsize=s.bytes_per_element,
    )


def calibrate(
    lm: LoadedModel,
    prompts: Sequence[PromptLike],
    *,
    low_bits: int = 4,
    high_bits: int = 16,
    quality_target: float = DEFAULT_KL_TARGET,
    examples: Sequence[Example] | None = None,
    f1_target: float | None = None,
    spec: QuantSpec | None = None,
    answer_ids: Sequence[Sequence[int]] | None = None,
    answer_tokens: int = 4,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    measure_int8: bool = True,
    progress: bool = True,
) -> CalibrationResult:
    """Find the smallest set of layers to keep at `high_bits` (others at `low_bits`) that meets the target.

    `prompts`: token id lists, `Prompt`s or already prepared `CalibrationPrompt`s (prepare once with
    `prepare_prompts` to calibrate several quantizers on the same prefills). `quality_target`: the largest mean
    next-token KL (nats, averaged over prompts and scored positions) the plan may have against full precision.
    `examples`: an optional small set scored with its dataset metric (F1) per layer and for the plan;
    `f1_target` (e.g. 0.98) then also requires plan F1 >= f1_target x full-precision F1, protecting further
    layers along the ranking if needed. `spec`: the quantizer's axes/group/symmetry (default KIVI: keys per
    channel, values per token, groups of 32); its bits are ignored in favour of low_bits/high_bits.
    """
    from tqdm.auto import tqdm

    if low_bits not in QUANT_BITS:
        raise ValueError(f"low_bits must be one of {sorted(QUANT_BITS)}")
    if high_bits not in PLAN_BITS or high_bits <= low_bits:
        raise ValueError(f"high_bits must be one of {sorted(PLAN_BITS)} and above low_bits")
    if not math.isfinite(quality_target) or quality_target < 0:
        raise ValueError("quality_target must be a finite KL >= 0")
    if f1_target is not None and not 0 < f1_target <= 1.5:
        raise ValueError("f1_target is a ratio to full-precision F1, e.g. 0.98")
    if not prompts:
        raise ValueError("calibrate needs at least one prompt")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    t0 = time.perf_counter()
    base = spec or QuantSpec(low_bits)
    low_spec, high_spec = _with_bits(base, low_bits), _with_bits(base, high_bits)
    num_layers = lm.spec.num_layers

    prepared = prepare_prompts(lm, prompts, answer_ids=answer_ids, answer_tokens=answer_tokens, progress=progress)
    # Reconstructions stacked behind the full-precision cache (source 0, the reference): low bits, then high bits
    # when below 16, then INT8 when neither width is 8 (measured only to put the KL numbers on a familiar scale).
    recon_bits = [low_bits] + ([high_bits] if high_bits < 16 else [])
    if measure_int8 and 8 not in recon_bits:
        recon_bits.append(8)
    lo = 1
    hi = recon_bits.index(high_bits) + 1 if high_bits < 16 else 0
    int8_source = recon_bits.index(8) + 1 if measure_int8 else None

    def recon(kv: KVCache) -> list[KVCache]:
        return [dequantize_cache(quantize_cache(kv, bits, _with_bits(base, bits))) for bits in recon_bits]

    sources = [_sources(cp.kv, recon(cp.kv)) for cp in prepared]

    def variant(low_layers: set[int] | range) -> Variant:
        return tuple(lo if layer in low_layers else hi for layer in range(num_layers))

    # 1. single-layer sensitivities, plus all-low (and INT8) for scale
    singles = [variant({layer}) for layer in range(num_layers)]
    extra = [variant(range(num_layers))]
    if int8_source is not None:
        extra.append((int8_source,) * num_layers)
    total = (len(singles) + len(extra)) * len(prepared)
    with tqdm(total=total, desc=f"layer trials ({lm.spec.name})", disable=not progress, leave=False) as bar:
        kl, agree = _evaluate(lm, prepared, sources, singles + extra, batch_size, bar)
    kl_mean = kl.mean(1)
    order = sorted(range(num_layers), key=lambda layer: (-float(kl_mean[layer]), layer))
    rank = {layer: i + 1 for i, layer in enumerate(order)}
    rows = [
        LayerSensitivity(
            layer=layer,
            kl_mean=float(kl_mean[layer]),
            kl_max=float(kl[layer].max()),
            top1_agreement=float(agree[layer].mean()),
            rank=rank[layer],
            kl_per_prompt=[float(v) for v in kl[layer]],
        )
        for layer in range(num_layers)
    ]
    uniform_low_kl = float(kl_mean[num_layers])
    int8_kl = float(kl_mean[num_layers + 1]) if int8_source is not None else None

    # 2. the protection curve, measured until the target is met
    curve: dict[int, CurvePoint] = {}

    def prefix_variant(k: int) -> Variant:
        return variant(set(range(num_layers)) - set(order[:k]))

    def measure(ks: list[int]) -> list[float]:
        with tqdm(total=len(ks) * len(prepared), desc="plan trials", disable=not progress, leave=False) as bar:
            m_kl, m_agree = _evaluate(lm, prepared, sources, [prefix_variant(k) for k in ks], batch_size, bar)
        for i, k in enumerate(ks):
            curve[k] = CurvePoint(
                k=k,
                protected=sorted(order[:k]),
                kl_mean=float(m_kl[i].mean()),
                top1_agreement=float(m_agree[i].mean()),
                bytes_at_reference=_bytes_for(lm, _plan_for(order[:k], low_bits, high_bits), low_spec),
            )
        return [curve[k].kl_mean for k in ks]

    k_kl, _ = search_prefix(order, measure, quality_target, chunk=batch_size)
    meets = curve[k_kl].kl_mean <= quality_target
    k = k_kl

    # 3. F1 on examples: per layer, uniform low, the plan (and further prefixes if an F1 target asks for them)
    f1_full = f1_low = f1_plan = None
    if examples:
        from scout.prompts import prompt_for_example

        ex_prompts = [prompt_for_example(lm.tokenizer, ex) for ex in examples]
        ex_prepared = prepare_prompts(lm, ex_prompts, answer_tokens=0, progress=progress)
        ex_sources = [_sources(cp.kv, recon(cp.kv)) for cp in ex_prepared]
        f1_variants = [(0,) * num_layers, variant(range(num_layers)), *singles]
        f1 = _f1_of_variants(lm, examples, ex_prepared, ex_sources, f1_variants, batch_size, max_new_tokens)
        f1_mean = f1.mean(1)
        f1_full, f1_low = float(f1_mean[0]), float(f1_mean[1])
        for row in rows:
            row.f1 = float(f1_mean[2 + row.layer])

        def plan_f1(k_: int) -> float:
            value = float(
                _f1_of_variants(
                    lm, examples, ex_prepared, ex_sources, [prefix_variant(k_)], batch_size, max_new_tokens
                ).mean()
            )
            if k_ in curve:
                curve[k_].f1 = value
            return value

        f1_plan = plan_f1(k)
        if f1_target is not None:
            while f1_plan < f1_target * f1_full - 1e-12 and k < num_layers:
                k += 1
                if k not in curve:
                    measure([k])
                f1_plan = plan_f1(k)
            meets = meets and f1_plan >= f1_target * f1_full - 1e-12

    protected = sorted(order[:k])
    plan = _plan_for(protected, low_bits, high_bits)
    result = CalibrationResult(
        model_name=lm.spec.name,
        model_fingerprint=lm.spec.fingerprint,
        num_layers=num_layers,
        spec=low_spec,
        low_bits=low_bits,
        high_bits=high_bits,
        quality_target=quality_target,
        f1_target=f1_target,
        layers=rows,
        curve=[curve[i] for i in sorted(curve)],
        plan=plan,
        protected=protected,
        plan_kl=curve[k].kl_mean,
        uniform_low_kl=uniform_low_kl,
        int8_kl=int8_kl,
        meets_target=meets,
        n_prompts=len(prepared),
        scored_positions=sum(cp.scored_positions for cp in prepared),
        answer_source=",".join(sorted({cp.answer_source for cp in prepared})),
        f1_full=f1_full,
        f1_uniform_low=f1_low,
        f1_plan=f1_plan,
        n_examples=len(examples or []),
        bytes={
            "plan": _bytes_for(lm, plan, low_spec),
            "uniform_low": _bytes_for(lm, BitPlan.uniform(low_bits), low_spec),
            "uniform_high": _bytes_for(lm, BitPlan.uniform(high_bits), high_spec),
        },
    )
    result.seconds = time.perf_counter() - t0
    return result


def _plan_for(protected: Sequence[int], low_bits: int, high_bits: int) -> BitPlan:
    return BitPlan(low_bits, {int(layer): high_bits for layer in protected})
