"""Calibration: find a model's bottleneck layers and the smallest mixed plan that meets a quality target.

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

The result becomes a `MixedPlan` (`scout.codec.mixed`), saved as a plan file that the ``mixed@<plan.json>`` codec
reads. `calibration_prompts` draws real calibration data; `plan_with_provenance` records how a plan was made.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from scout.codec.mixed import MixedPlan, spec_to_json, with_bits
from scout.codec.quant import (
    PLAN_BITS,
    QUANT_BITS,
    BitPlan,
    QuantSpec,
    dequantize_cache,
    estimate_bytes,
    quantize_cache,
)
from scout.codec.trials import (
    Variant,
    evaluate_variants,
    f1_of_variants,
    prepare_prompts,
    stack_sources,
)
from scout.kvcache import KVCache

if TYPE_CHECKING:
    from scout.codec.trials import PromptLike
    from scout.datasets import Example
    from scout.models import LoadedModel

DEFAULT_KL_TARGET = 0.01
"""Default quality target: mean next-token KL divergence (nats) of the chosen plan against full precision.

For scale, measured here on SQuAD v2 prompts: uniform KIVI INT4 costs SmolLM2-135M about 0.01-0.02 nats and the
Qwen2.5-Coder pair 0.001-0.01; per-token symmetric INT4 (the study's quantizer) costs them 0.06-0.55. A
plan at 0.01 nats rarely changes a greedy answer token."""
BYTES_REFERENCE_TOKENS = 1024
"""Context length at which plans' byte costs are reported (channel-axis groups make bytes/token depend on it)."""


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
            spec=with_bits(self.spec, self.low_bits),
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
    low_spec, high_spec = with_bits(base, low_bits), with_bits(base, high_bits)
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
        return [dequantize_cache(quantize_cache(kv, bits, with_bits(base, bits))) for bits in recon_bits]

    sources = [stack_sources(cp.kv, recon(cp.kv)) for cp in prepared]

    def variant(low_layers: set[int] | range) -> Variant:
        return tuple(lo if layer in low_layers else hi for layer in range(num_layers))

    # 1. single-layer sensitivities, plus all-low (and INT8) for scale
    singles = [variant({layer}) for layer in range(num_layers)]
    extra = [variant(range(num_layers))]
    if int8_source is not None:
        extra.append((int8_source,) * num_layers)
    total = (len(singles) + len(extra)) * len(prepared)
    with tqdm(total=total, desc=f"layer trials ({lm.spec.name})", disable=not progress, leave=False) as bar:
        kl, agree = evaluate_variants(lm, prepared, sources, singles + extra, batch_size, bar)
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
            m_kl, m_agree = evaluate_variants(lm, prepared, sources, [prefix_variant(k) for k in ks], batch_size, bar)
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
        ex_sources = [stack_sources(cp.kv, recon(cp.kv)) for cp in ex_prepared]
        f1_variants = [(0,) * num_layers, variant(range(num_layers)), *singles]
        f1 = f1_of_variants(lm, examples, ex_prepared, ex_sources, f1_variants, batch_size, max_new_tokens)
        f1_mean = f1.mean(1)
        f1_full, f1_low = float(f1_mean[0]), float(f1_mean[1])
        for row in rows:
            row.f1 = float(f1_mean[2 + row.layer])

        def plan_f1(k_: int) -> float:
            value = float(
                f1_of_variants(
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


# ----------------------------------------------------------------------------------------------------------------
# real calibration data and provenance
# ----------------------------------------------------------------------------------------------------------------
def calibration_prompts(
    lm: LoadedModel,
    *,
    n: int,
    f1_examples: int = 0,
    dataset: str = "squad_v2",
    seed: int = 0,
    max_context_chars: int = 1200,
) -> tuple[list[Any], list[list[int]], list[Any]]:
    """Real calibration data: `n` prompts (with their gold answer tokens) and `f1_examples` separate examples.

    Both come from one seeded, answerable sample, the prompts first, so the F1 set never overlaps them.
    """
    from scout.datasets import load_examples
    from scout.prompts import prompt_for_example

    examples = load_examples(
        dataset, n=n + f1_examples, seed=seed, answerable_only=True, max_context_chars=max_context_chars
    )
    if len(examples) < n + f1_examples:
        raise ValueError(f"{dataset}: only {len(examples)} examples survive the filters, {n + f1_examples} needed")
    calib = examples[:n]
    prompts = [prompt_for_example(lm.tokenizer, ex) for ex in calib]
    gold = [lm.tokenizer(" " + ex.answers[0], add_special_tokens=False)["input_ids"] for ex in calib]
    return prompts, gold, list(examples[n:])


def plan_with_provenance(result: CalibrationResult, *, model: str, **provenance: Any) -> MixedPlan:
    """The result's plan, with the calibration data and the equivalent command line added to its evidence."""
    plan = result.mixed_plan()
    evidence = dict(plan.evidence)
    evidence["calibration_data"] = provenance
    flags = {
        "n": provenance.get("n"),
        "low-bits": result.low_bits,
        "high-bits": result.high_bits,
        "target": f"{result.quality_target:g}",
        "f1-target": result.f1_target,
        "quantizer": provenance.get("quantizer"),
        "answers": provenance.get("answers"),
        "answer-tokens": provenance.get("answer_tokens"),
        "f1-examples": provenance.get("f1_examples"),
        "dataset": provenance.get("dataset"),
        "seed": provenance.get("seed"),
        "max-context-chars": provenance.get("max_context_chars"),
    }
    evidence["command"] = f"scout calibrate --model {model} " + " ".join(
        f"--{k} {v}" for k, v in flags.items() if v is not None
    )
    return replace(plan, evidence=evidence)
