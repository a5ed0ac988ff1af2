"""`scout calibrate` (per-layer bottleneck search, saves a mixed-precision plan) and `scout bench codec`.

`scout bench codec` answers one question with measurements: is the KV codec's compute small next to the transfer
it saves? For a real cache (real SQuAD v2 / TriviaQA context text, prefilled by the model to exactly `--tokens`
tokens) it times encode (quantize + serialise into the checked blob) and decode (verify + dequantize into a
cache) of every mode — bf16, INT8/4/2, a calibrated mixed plan, CacheGen-style delta + INT8/4, and each with a
zstd layer — next to a plain clone of the same tensors, and sets them against the transfer time of the blob at
`--rate` Mbit/s. It also records what each mode costs in quality on that cache (KL of the next-token
distributions over the following `--kl-tokens` tokens of the same text, teacher-forced, against bf16), the
reconstruction error, the ideal entropy-coded sizes and the study's variance-reduction statistic, so the delta
claim can be checked in one run. Results go to JSON + Markdown + PNG under `--out`.

Torch is limited to `--threads` (1 by default) while timing, so numbers do not depend on what else runs.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from scout.codec.mixed import CalibrationResult, MixedPlan
    from scout.kvcache import KVCache
    from scout.models import LoadedModel

console = Console()
err = Console(stderr=True)

DEFAULT_PLAN_DIR = Path("reports/plans")
DEFAULT_BENCH_DIR = Path("reports/bench_codec")


def _fail(msg: str) -> None:
    err.print(f"[red]error:[/red] {msg}", soft_wrap=True)
    raise typer.Exit(2)


def _safe_name(model: str) -> str:
    """A file-name-safe form of a model alias, folder or hub id."""
    return "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in Path(model).name or model)


# ----------------------------------------------------------------------------------------------------------------
# scout calibrate
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


def print_calibration(out: Console, result: CalibrationResult) -> None:
    """The per-layer sensitivity table, the measured protection curve, and the chosen plan."""
    table = Table(
        "layer",
        "rank",
        f"KL mean (INT{result.low_bits} alone)",
        "KL max",
        "top-1 agree",
        *(["F1"] if result.n_examples else []),
        "",
        title=f"{result.model_name}: damage with one layer at {result.low_bits} bits, others at {result.high_bits}",
    )
    protected = set(result.protected)
    peak = max((r.kl_mean for r in result.layers), default=0.0) or 1.0
    for r in result.layers:
        bar = "█" * max(0, round(20 * r.kl_mean / peak))
        style = "bold red" if r.layer in protected else None
        table.add_row(
            str(r.layer),
            str(r.rank),
            f"{r.kl_mean:.5f}",
            f"{r.kl_max:.5f}",
            f"{r.top1_agreement:.3f}",
            *([f"{r.f1:.3f}" if r.f1 is not None else ""] if result.n_examples else []),
            bar + (" protected" if r.layer in protected else ""),
            style=style,
        )
    out.print(table)
    curve = Table("k", "protected layers", "KL mean", "top-1 agree", "MB @1024 tok", "F1", title="measured plans")
    for c in result.curve:
        curve.add_row(
            str(c.k),
            ",".join(map(str, c.protected)) or "-",
            f"{c.kl_mean:.5f}",
            f"{c.top1_agreement:.3f}",
            f"{c.bytes_at_reference / 1e6:.2f}",
            f"{c.f1:.3f}" if c.f1 is not None else "",
        )
    out.print(curve)
    b = result.bytes
    extra = 100.0 * (b["plan"] / b["uniform_low"] - 1.0)
    verdict = "[green]meets[/green]" if result.meets_target else "[red]does NOT meet[/red]"
    out.print(
        f"plan: INT{result.low_bits} everywhere, layers {result.protected or 'none'} at {result.high_bits} bits; "
        f"KL {result.plan_kl:.5f} {verdict} the target {result.quality_target:g} "
        f"(uniform INT{result.low_bits}: {result.uniform_low_kl:.5f}"
        + (f", uniform INT8: {result.int8_kl:.5f}" if result.int8_kl is not None else "")
        + f"); +{extra:.1f} % bytes over uniform INT{result.low_bits}"
    )
    if result.f1_full is not None:
        out.print(
            f"F1 on {result.n_examples} examples: full {result.f1_full:.3f}, uniform INT{result.low_bits} "
            f"{result.f1_uniform_low:.3f}, plan {result.f1_plan:.3f}"
        )
    out.print(
        f"{result.n_prompts} prompts, {result.scored_positions} scored positions ({result.answer_source} answers), "
        f"{result.seconds:.1f}s"
    )


def calibrate_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="alias, local folder or Hugging Face id")],
    n: Annotated[int, typer.Option("--n", help="calibration prompts (real SQuAD v2 questions)")] = 8,
    low_bits: Annotated[int, typer.Option("--low-bits", help="bits of unprotected layers: 2, 4 or 8")] = 4,
    high_bits: Annotated[int, typer.Option("--high-bits", help="bits of protected layers: 8 or 16")] = 16,
    target: Annotated[
        float, typer.Option("--target", help="max mean next-token KL (nats) of the plan vs full precision")
    ] = 0.01,
    quantizer: Annotated[
        str, typer.Option("--quantizer", help="kivi (keys per channel, values per token) or study (per token)")
    ] = "kivi",
    answers: Annotated[str, typer.Option("--answers", help="teacher-forced tokens: greedy or gold")] = "greedy",
    answer_tokens: Annotated[int, typer.Option("--answer-tokens", help="answer tokens scored per prompt")] = 4,
    f1_examples: Annotated[int, typer.Option("--f1-examples", help="extra examples scored with F1 (0: none)")] = 0,
    f1_target: Annotated[
        float | None, typer.Option("--f1-target", help="also require plan F1 >= this x full F1 (with --f1-examples)")
    ] = None,
    dataset: Annotated[str, typer.Option("--dataset", help="squad_v2 or triviaqa")] = "squad_v2",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    max_context_chars: Annotated[int, typer.Option("--max-context-chars")] = 1200,
    batch_size: Annotated[int, typer.Option("--batch-size", help="trial caches per forward pass")] = 8,
    threads: Annotated[int, typer.Option("--threads", help="torch threads (0: torch's default)")] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="plan JSON (default reports/plans/<model>-int<bits>[-study].json)")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, … (default: CUDA if present)")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="bf16 or fp32")] = "bf16",
) -> None:
    """Find the model's bottleneck layers for INT<low-bits> and save the smallest mixed plan meeting --target."""
    if quantizer not in ("kivi", "study"):
        _fail("--quantizer must be kivi or study")
    if answers not in ("greedy", "gold"):
        _fail("--answers must be greedy or gold")
    if n < 1:
        _fail("--n must be >= 1")
    import torch

    from scout.codec.mixed import calibrate, study_spec
    from scout.models import ModelNotAvailable, load_model

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        with console.status(f"loading {model} …"):
            lm = load_model(model, dtype=dtype, device=device)
        prompts, gold, examples = calibration_prompts(
            lm, n=n, f1_examples=f1_examples, dataset=dataset, seed=seed, max_context_chars=max_context_chars
        )
        spec = study_spec(low_bits, lm.spec.head_dim) if quantizer == "study" else None
        result = calibrate(
            lm,
            prompts,
            low_bits=low_bits,
            high_bits=high_bits,
            quality_target=target,
            examples=examples or None,
            f1_target=f1_target,
            spec=spec,
            answer_ids=gold if answers == "gold" else None,
            answer_tokens=answer_tokens,
            batch_size=batch_size,
        )
    except (ModelNotAvailable, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    print_calibration(console, result)
    path = out or default_plan_path(model, low_bits, quantizer)
    provenance = {
        "dataset": dataset,
        "seed": seed,
        "n": n,
        "max_context_chars": max_context_chars,
        "quantizer": quantizer,
        "answers": answers,
        "answer_tokens": answer_tokens,
        "f1_examples": f1_examples,
    }
    plan_with_provenance(result, model=model, **provenance).save(path)
    console.print(f"saved {path}")


def default_plan_path(model: str, low_bits: int, quantizer: str = "kivi") -> Path:
    """reports/plans/<model>-int<bits>.json (KIVI), or …-study.json for the study's per-token quantizer."""
    suffix = "-study" if quantizer == "study" else ""
    return DEFAULT_PLAN_DIR / f"{_safe_name(model)}-int{low_bits}{suffix}.json"


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


# ----------------------------------------------------------------------------------------------------------------
# scout bench codec
# ----------------------------------------------------------------------------------------------------------------
def bench_text_ids(lm: LoadedModel, n_tokens: int, *, seed: int = 0) -> tuple[list[int], list[str]]:
    """Token ids of real document text: distinct SQuAD v2 and TriviaQA contexts, alternated and joined, until
    there are `n_tokens` ids. Returns the ids and the ids of the examples whose contexts were used."""
    from scout.datasets import load_examples

    pools = [load_examples("squad_v2", n=400, seed=seed), load_examples("triviaqa", n=200, seed=seed)]
    seen: set[str] = set()
    ids: list[int] = []
    used: list[str] = []
    cursors = [0, 0]
    turn = 0
    while len(ids) < n_tokens:
        if all(c >= len(p) for c, p in zip(cursors, pools, strict=True)):
            raise ValueError(f"not enough distinct context text for {n_tokens} tokens")
        pool = pools[turn % 2]
        i = cursors[turn % 2]
        cursors[turn % 2] += 1
        turn += 1
        if i >= len(pool) or pool[i].context in seen or not pool[i].context:
            continue
        seen.add(pool[i].context)
        used.append(pool[i].id)
        piece = ("\n\n" if ids else "") + pool[i].context
        ids.extend(lm.tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids[:n_tokens], used


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of `repeats` calls (after one untimed warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _rel_rmse(a: list[Any], b: list[Any]) -> float:
    import torch

    num = sum(float(torch.sum((x.float() - y.float()) ** 2)) for x, y in zip(a, b, strict=True))
    den = sum(float(torch.sum(y.float() ** 2)) for y in b)
    return (num / den) ** 0.5 if den > 0 else 0.0


def _next_token_logprobs(lm: LoadedModel, kv: KVCache, continuation: list[int]) -> Any:
    import torch

    from scout.inference import _set_attn, register_capture_attention

    _set_attn(lm.model, register_capture_attention())
    with torch.inference_mode():
        cache = kv.to(device=lm.device, dtype=lm.model.dtype).to_hf(lm.model.config)
        start = kv.next_position
        ids = torch.tensor([continuation], device=lm.device)
        pos = torch.arange(start, start + len(continuation), device=lm.device).unsqueeze(0)
        logits = lm.model(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def _resolve_plan(lm: LoadedModel, plan_path: Path | None, model: str) -> tuple[MixedPlan, str]:
    """The calibrated plan for this model (explicit path, else reports/plans/<model>-int4.json), or the study's
    rule (layer 0 at 16 bits, others INT4) labelled as such when no calibrated plan exists."""
    from scout.codec.mixed import MixedPlan
    from scout.codec.quant import BitPlan, QuantSpec

    path = plan_path or DEFAULT_PLAN_DIR / f"{_safe_name(model)}-int4.json"
    if path.is_file():
        return MixedPlan.load(path, expected_fingerprint=lm.spec.fingerprint), str(path)
    if plan_path is not None:
        raise FileNotFoundError(f"plan file {plan_path} not found")
    fallback = MixedPlan(BitPlan(4, {0: 16}), QuantSpec(4), lm.spec.fingerprint, lm.spec.num_layers, lm.spec.name)
    return fallback, "none calibrated: the study's rule (layer 0 at 16 bits, others INT4)"


def run_codec_bench(
    lm: LoadedModel,
    *,
    model: str,
    tokens: int = 1024,
    repeats: int = 5,
    rate_mbit: float = 100.0,
    group: int = 10,
    kl_tokens: int = 16,
    plan_path: Path | None = None,
    zstd_level: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every codec mode on one real cache of `tokens` tokens; returns the JSON-ready result."""
    import torch

    from scout.codec.delta import (
        code_entropy,
        compress_blob,
        decode_delta_blob,
        decompress_blob,
        delta_decode,
        delta_encode,
        encode_delta_blob,
        variance_reduction,
    )
    from scout.codec.quant import QuantizedCache, quantize_cache
    from scout.codec.wire import decode_blob, encode_blob
    from scout.inference import prefill, warmup

    say = progress or (lambda msg: None)
    if tokens < 2 or repeats < 1 or rate_mbit <= 0 or kl_tokens < 1:
        raise ValueError("need tokens >= 2, repeats >= 1, rate > 0 and kl_tokens >= 1")
    ids, used = bench_text_ids(lm, tokens + kl_tokens, seed=seed)
    context, continuation = ids[:tokens], ids[tokens:]
    warmup(lm)
    say(f"prefill {tokens} tokens")
    pre = prefill(lm, context)
    kv = pre.kv.to(device="cpu")
    fp = lm.spec.fingerprint
    plan, plan_source = _resolve_plan(lm, plan_path, model)
    if plan.num_layers != kv.num_layers:
        raise ValueError(f"plan has {plan.num_layers} layers, the cache {kv.num_layers}")

    def blob_mode(make: Callable[[KVCache], QuantizedCache | KVCache]) -> tuple[Callable[[], bytes], Callable]:
        def enc() -> bytes:
            return encode_blob(make(kv), model_fingerprint=fp, original_seq_len=tokens)

        def dec(blob: bytes) -> KVCache:
            return decode_blob(blob, expected_fingerprint=fp).kvcache()

        return enc, dec

    def delta_mode(bits: int) -> tuple[Callable[[], bytes], Callable]:
        def enc() -> bytes:
            return encode_delta_blob(delta_encode(kv, group=group, bits=bits), model_fingerprint=fp)

        def dec(blob: bytes) -> KVCache:
            return delta_decode(decode_delta_blob(blob, expected_fingerprint=fp))

        return enc, dec

    base_modes: dict[str, tuple[Callable[[], bytes], Callable, str]] = {
        "bf16": (*blob_mode(lambda c: c), "raw tensors in the checked blob"),
        "int8": (*blob_mode(lambda c: quantize_cache(c, 8)), "KIVI axes, groups of 32"),
        "int4": (*blob_mode(lambda c: quantize_cache(c, 4)), "KIVI axes, groups of 32"),
        "int2": (*blob_mode(lambda c: quantize_cache(c, 2)), "KIVI axes, groups of 32"),
        "mixed": (
            *blob_mode(plan.quantize),
            f"INT{plan.plan.default}, layers {plan.protected or 'none'} at 16 bits, "
            f"{'per-token symmetric' if plan.spec.axis_k == 'token' else 'KIVI axes'} ({plan_source})",
        ),
        "delta+int8": (*delta_mode(8), f"anchor every {group} tokens (raw), deltas INT8"),
        "delta+int4": (*delta_mode(4), f"anchor every {group} tokens (raw), deltas INT4"),
    }
    clone_s, _ = _median_time(kv.clone, repeats)
    ref_logp = _next_token_logprobs(lm, kv, continuation)
    rows: list[dict[str, Any]] = []
    bf16_bytes = 0
    for name, (enc, dec, note) in base_modes.items():
        say(f"{name}")
        enc_s, blob = _median_time(enc, repeats)
        dec_s, rebuilt = _median_time(lambda dec=dec, blob=blob: dec(blob), repeats)
        if name == "bf16":
            bf16_bytes = len(blob)
            if not rebuilt.equal(kv):
                raise RuntimeError("bf16 blob did not round-trip bit-exactly")
        logp = _next_token_logprobs(lm, rebuilt, continuation)
        kl = float((ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp_min(0).mean())
        top1 = float((logp.argmax(-1) == ref_logp.argmax(-1)).float().mean())
        quality = {
            "kl_next_tokens": kl,
            "top1_agreement": top1,
            "rel_rmse_k": _rel_rmse(rebuilt.keys, kv.keys),
            "rel_rmse_v": _rel_rmse(rebuilt.values, kv.values),
        }
        entropy = None
        if name.startswith("delta"):
            entropy = code_entropy(decode_delta_blob(blob, expected_fingerprint=fp)).to_json()
        elif name != "bf16":
            entropy = code_entropy(decode_blob(blob, expected_fingerprint=fp).cache).to_json()
        rows.append(_row(name, note, len(blob), enc_s, dec_s, clone_s, rate_mbit, quality, entropy))

        z_enc_s, zblob = _median_time(lambda enc=enc: compress_blob(enc(), zstd_level), repeats)
        z_dec_s, z_rebuilt = _median_time(lambda dec=dec, zblob=zblob: dec(decompress_blob(zblob)), repeats)
        if not z_rebuilt.equal(rebuilt):
            raise RuntimeError(f"{name}+zstd did not decode to the same cache")
        rows.append(
            _row(f"{name}+zstd", f"{note}; zstd level {zstd_level}", len(zblob), z_enc_s, z_dec_s, clone_s, rate_mbit)
        )
        rows[-1]["quality"] = quality
    for r in rows:
        r["ratio_to_bf16"] = r["bytes"] / bf16_bytes
    variance = variance_reduction(kv, group)
    return {
        "schema_version": 1,
        "bench": "codec",
        "model": model,
        "model_fingerprint": fp,
        "spec": lm.spec.to_json(),
        "tokens": tokens,
        "kl_tokens": kl_tokens,
        "repeats": repeats,
        "rate_mbit": rate_mbit,
        "group": group,
        "zstd_level": zstd_level,
        "torch_threads": torch.get_num_threads(),
        "device": lm.device,
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        "prefill_s": pre.seconds,
        "kv_bytes": kv.nbytes(),
        "clone_s": clone_s,
        "plan_source": plan_source,
        "text_source": {"datasets": ["squad_v2", "triviaqa"], "example_ids": used, "seed": seed},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "modes": rows,
        "variance_reduction": variance.to_json(),
    }


def _row(
    name: str,
    note: str,
    n_bytes: int,
    enc_s: float,
    dec_s: float,
    clone_s: float,
    rate_mbit: float,
    quality: dict[str, float] | None = None,
    entropy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    transfer_s = n_bytes * 8 / (rate_mbit * 1e6)
    codec_s = enc_s + dec_s
    return {
        "mode": name,
        "note": note,
        "bytes": n_bytes,
        "encode_s": enc_s,
        "decode_s": dec_s,
        "codec_s": codec_s,
        "clone_s": clone_s,
        "codec_over_clone": codec_s / clone_s if clone_s > 0 else None,
        "transfer_s": transfer_s,
        "codec_over_transfer": codec_s / transfer_s,
        "total_s": codec_s + transfer_s,
        "quality": quality,
        "entropy": entropy,
    }


def codec_markdown(res: dict[str, Any]) -> str:
    """The bench as a Markdown report (the table the README and issues quote)."""
    lines = [
        f"# Codec benchmark: {res['model']}, {res['tokens']} tokens",
        "",
        f"Real cache: {res['tokens']} tokens of SQuAD v2 / TriviaQA context text prefilled by {res['model']} "
        f"({res['spec']['num_layers']} layers x {res['spec']['num_kv_heads']} KV heads x {res['spec']['head_dim']} "
        f"dims, {res['dtype']}, KV {res['kv_bytes'] / 1e6:.2f} MB). Times are medians of {res['repeats']} runs "
        f"with {res['torch_threads']} torch thread(s) on {res['device']} ({res['machine']['processor']}); "
        f"transfer at {res['rate_mbit']:g} Mbit/s. Codec = encode (quantize + serialise + checksum) + decode "
        f"(verify + dequantize). Clone of the same tensors: {res['clone_s'] * 1e3:.1f} ms. "
        f"Mixed plan: {res['plan_source']}.",
        "",
        "| mode | bytes | vs bf16 | encode ms | decode ms | codec ms | codec / clone | transfer ms "
        "| codec / transfer | KL next | top-1 | rel. RMSE K / V |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["modes"]:
        q = r["quality"] or {}
        lines.append(
            f"| {r['mode']} | {r['bytes']:,} | {r['ratio_to_bf16']:.3f} | {r['encode_s'] * 1e3:.1f} | "
            f"{r['decode_s'] * 1e3:.1f} | {r['codec_s'] * 1e3:.1f} | {r['codec_over_clone']:.1f} | "
            f"{r['transfer_s'] * 1e3:.1f} | {r['codec_over_transfer']:.3f} | {q.get('kl_next_tokens', 0):.5f} | "
            f"{q.get('top1_agreement', 0):.3f} | {q.get('rel_rmse_k', 0):.4f} / {q.get('rel_rmse_v', 0):.4f} |"
        )
    lines += [
        "",
        f"KL next / top-1: next-token distributions over the following {res['kl_tokens']} tokens of the same "
        "text (teacher-forced) from the rebuilt cache, against bf16; zstd rows are lossless, so their quality is "
        "their base mode's.",
        "",
        "## Ideal entropy-coded sizes (order-0, code symbols only; scales and raw anchors as stored)",
        "",
        "| mode | payload bytes | per-tensor model | per-channel model | bits/symbol (tensor / channel) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in res["modes"]:
        e = r["entropy"]
        if e:
            lines.append(
                f"| {r['mode']} | {e['payload_bytes']:,} | {e['entropy_per_tensor_bytes']:,} | "
                f"{e['entropy_per_channel_bytes']:,} | {e['bits_per_symbol_per_tensor']:.2f} / "
                f"{e['bits_per_symbol_per_channel']:.2f} |"
            )
    s = res["variance_reduction"]["summary"]
    lines += [
        "",
        f"## Variance reduction of anchor deltas (group {res['group']})",
        "",
        "Raw variance over the whole tensor / variance of the non-anchor deltas (the study's statistic), and "
        "the same with the raw values' within-channel variance (per-channel means removed) in the numerator.",
        "",
        "| | whole-tensor ratio, mean | max | within-channel ratio, mean | max |",
        "|---|---:|---:|---:|---:|",
        f"| keys | {s['keys_reduction_mean']:.2f} | {s['keys_reduction_max']:.2f} | "
        f"{s['keys_channel_reduction_mean']:.2f} | {s['keys_channel_reduction_max']:.2f} |",
        f"| values | {s['values_reduction_mean']:.2f} | {s['values_reduction_max']:.2f} | "
        f"{s['values_channel_reduction_mean']:.2f} | {s['values_channel_reduction_max']:.2f} |",
        "",
        f"Regenerate: `scout bench codec --model {res['model']} --tokens {res['tokens']} "
        f"--repeats {res['repeats']} --rate {res['rate_mbit']:g}`",
        "",
    ]
    return "\n".join(lines)


def codec_plot(res: dict[str, Any], path: Path) -> Path:
    """Codec time next to transfer time per mode (log scale), and blob size per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [r["mode"] for r in res["modes"]]
    y = list(range(len(modes)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.42 * len(modes) + 1.8), sharey=True)
    h = 0.38
    ax1.barh([i - h / 2 for i in y], [r["codec_s"] * 1e3 for r in res["modes"]], h, label="encode + decode")
    ax1.barh(
        [i + h / 2 for i in y],
        [r["transfer_s"] * 1e3 for r in res["modes"]],
        h,
        label=f"transfer @ {res['rate_mbit']:g} Mbit/s",
    )
    ax1.axvline(res["clone_s"] * 1e3, color="grey", ls="--", lw=1, label="clone of the tensors")
    ax1.set_xscale("log")
    ax1.set_xlabel("ms (log scale)")
    ax1.set_yticks(y, modes)
    ax1.invert_yaxis()

    ax2.barh(y, [r["bytes"] / 1e6 for r in res["modes"]], 0.6, color="tab:green")
    ax2.set_xlabel("blob MB")
    fig.suptitle(f"{res['model']}: {res['tokens']}-token KV cache, {res['torch_threads']} thread(s)")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_codec_report(res: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{_safe_name(res['model'])}-{res['tokens']}"
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    paths[0].write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(codec_markdown(res), encoding="utf-8")
    codec_plot(res, paths[2])
    return paths


def bench_codec_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="alias, local folder or Hugging Face id")] = (
        "qwen2.5-coder-1.5b"
    ),
    tokens: Annotated[int, typer.Option("--tokens", help="context tokens in the cache")] = 1024,
    repeats: Annotated[int, typer.Option("--repeats", help="timed runs per measurement (median)")] = 5,
    rate: Annotated[float, typer.Option("--rate", help="uplink rate for the transfer time, Mbit/s")] = 100.0,
    group: Annotated[int, typer.Option("--group", help="delta encoding: tokens per anchor group")] = 10,
    kl_tokens: Annotated[int, typer.Option("--kl-tokens", help="continuation tokens scored for quality")] = 16,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="mixed plan JSON (default reports/plans/<model>-int4.json)")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", help="torch threads while timing")] = 1,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = DEFAULT_BENCH_DIR,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, … (default: CUDA if present)")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="bf16 or fp32")] = "bf16",
) -> None:
    """Encode/decode time of every KV codec mode vs the transfer time of its bytes, on a real cache."""
    import torch

    from scout.codec.mixed import PlanFormatError
    from scout.models import ModelNotAvailable, load_model

    if threads < 1:
        _fail("--threads must be >= 1")
    torch.set_num_threads(threads)
    try:
        with console.status(f"loading {model} …"):
            lm = load_model(model, dtype=dtype, device=device)
        with console.status("benchmarking …") as status:
            res = run_codec_bench(
                lm,
                model=model,
                tokens=tokens,
                repeats=repeats,
                rate_mbit=rate,
                group=group,
                kl_tokens=kl_tokens,
                plan_path=plan,
                progress=lambda msg: status.update(f"benchmarking: {msg}"),
            )
    except (ModelNotAvailable, FileNotFoundError, PlanFormatError, ValueError) as exc:
        _fail(str(exc))
    table = Table(
        "mode", "MB", "encode ms", "decode ms", "transfer ms", "codec / transfer", "KL next", "top-1", title="codec"
    )
    for r in res["modes"]:
        table.add_row(
            r["mode"],
            f"{r['bytes'] / 1e6:.2f}",
            f"{r['encode_s'] * 1e3:.1f}",
            f"{r['decode_s'] * 1e3:.1f}",
            f"{r['transfer_s'] * 1e3:.1f}",
            f"{r['codec_over_transfer']:.3f}",
            f"{r['quality']['kl_next_tokens']:.5f}",
            f"{r['quality']['top1_agreement']:.3f}",
        )
    console.print(table)
    console.print(f"clone of the same tensors: {res['clone_s'] * 1e3:.1f} ms; rate {rate:g} Mbit/s")
    for p in write_codec_report(res, out):
        console.print(f"wrote {p}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `scout calibrate` to the top level and `scout bench codec` to the bench group."""
    app.command("calibrate")(calibrate_cmd)
    bench.command("codec")(bench_codec_cmd)
