"""`scout bench codec`: is the KV codec's compute small next to the transfer it saves? Measured on a real cache.

For a real cache (real SQuAD v2 / TriviaQA context text, prefilled by the model to exactly `tokens` tokens) it times
encode (quantize + serialise into the checked blob) and decode (verify + dequantize into a cache) of every mode —
bf16, INT8/4/2, a calibrated mixed plan, CacheGen-style delta + INT8/4, and each with a zstd layer — next to a
plain clone of the same tensors, and sets them against the transfer time of the blob at `rate_mbit` Mbit/s. It also
records what each mode costs in quality on that cache (KL of the next-token distributions over the following
`kl_tokens` tokens of the same text, teacher-forced, against bf16), the reconstruction error, the ideal
entropy-coded sizes and the study's variance-reduction statistic, so the delta claim can be checked in one run.
Every mode is a codec from `scout.codec.registry` (its spec is in each row); results go to JSON + Markdown + PNG.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scout_cli.benchmarks.common import timed

if TYPE_CHECKING:
    from scout.codec.base import Codec
    from scout.kvcache import KVCache
    from scout.models import LoadedModel

DEFAULT_PLAN_DIR = Path("reports/plans")
DEFAULT_BENCH_DIR = Path("reports/bench_codec")


def safe_name(model: str) -> str:
    """A file-name-safe form of a model alias, folder or hub id."""
    return "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in Path(model).name or model)


def default_plan_path(model: str, low_bits: int, quantizer: str = "kivi") -> Path:
    """reports/plans/<model>-int<bits>.json (KIVI), or …-study.json for the study's per-token quantizer."""
    suffix = "-study" if quantizer == "study" else ""
    return DEFAULT_PLAN_DIR / f"{safe_name(model)}-int{low_bits}{suffix}.json"


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
    """Median wall time of `repeats` calls after one untimed warm-up call, and the last result."""
    fn()
    median, _, result = timed(fn, repeats)
    return median, result


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


def _mixed_codec(lm: LoadedModel, plan_path: Path | None, model: str) -> tuple[Codec, str, str]:
    """The calibrated plan for this model (explicit path, else reports/plans/<model>-int4.json), or the study's
    rule (layer 0 at 16 bits, others INT4: ``mixed:0=16``) labelled as such when no calibrated plan exists.
    Returns the codec, what it is (for the report) and where it came from."""
    from scout.codec.mixed import MixedCodec, PlanFileCodec

    path = plan_path or DEFAULT_PLAN_DIR / f"{safe_name(model)}-int4.json"
    codec: PlanFileCodec | MixedCodec
    if path.is_file():
        codec = PlanFileCodec(str(path))
        codec.check_model(lm.spec.fingerprint)
        if codec.mixed_plan.num_layers != lm.spec.num_layers:
            raise ValueError(f"plan has {codec.mixed_plan.num_layers} layers, the model {lm.spec.num_layers}")
        spec, source = codec.mixed_plan.spec, str(path)
    elif plan_path is not None:
        raise FileNotFoundError(f"plan file {plan_path} not found")
    else:
        codec = MixedCodec(((0, 16),))
        spec = codec.quant_spec(lm.spec.head_dim)
        source = "none calibrated: the study's rule (layer 0 at 16 bits, others INT4)"
    plan = codec.bit_plan
    protected = sorted(layer for layer, bits in plan.overrides.items() if bits > plan.default)
    axes = "per-token symmetric" if spec.axis_k == "token" else "KIVI axes"
    return codec, f"INT{plan.default}, layers {protected or 'none'} at 16 bits, {axes} ({source})", source


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

    from scout.codec.delta import DeltaCodec, variance_reduction
    from scout.codec.entropy import ZstdCodec, code_entropy
    from scout.codec.registry import get_codec
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
    mixed, mixed_note, plan_source = _mixed_codec(lm, plan_path, model)
    kivi = "KIVI axes, groups of 32"
    base_modes: dict[str, tuple[Codec, str]] = {
        "bf16": (get_codec("bf16"), "raw tensors in the checked blob"),
        "int8": (get_codec("int8"), kivi),
        "int4": (get_codec("int4"), kivi),
        "int2": (get_codec("int2"), kivi),
        "mixed": (mixed, mixed_note),
        "delta+int8": (DeltaCodec(8, group=group), f"anchor every {group} tokens (raw), deltas INT8"),
        "delta+int4": (DeltaCodec(4, group=group), f"anchor every {group} tokens (raw), deltas INT4"),
    }

    def measure(codec: Codec) -> tuple[float, bytes, float, KVCache]:
        enc_s, blob = _median_time(
            lambda: codec.to_blob(codec.encode(kv), model_fingerprint=fp, original_seq_len=tokens), repeats
        )
        dec_s, rebuilt = _median_time(lambda: codec.decode(codec.from_blob(blob, expected_fingerprint=fp)), repeats)
        return enc_s, blob, dec_s, rebuilt

    clone_s, _ = _median_time(kv.clone, repeats)
    ref_logp = _next_token_logprobs(lm, kv, continuation)
    rows: list[dict[str, Any]] = []
    bf16_bytes = 0
    for name, (codec, note) in base_modes.items():
        say(f"{name}")
        enc_s, blob, dec_s, rebuilt = measure(codec)
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
        entropy = None if name == "bf16" else code_entropy(codec.from_blob(blob, expected_fingerprint=fp)).to_json()
        rows.append(_row(name, codec.spec, note, len(blob), enc_s, dec_s, clone_s, rate_mbit, quality, entropy))

        zstd = ZstdCodec(codec, zstd_level)
        z_enc_s, zblob, z_dec_s, z_rebuilt = measure(zstd)
        if not z_rebuilt.equal(rebuilt):
            raise RuntimeError(f"{name}+zstd did not decode to the same cache")
        z_note = f"{note}; zstd level {zstd_level}"
        rows.append(_row(f"{name}+zstd", zstd.spec, z_note, len(zblob), z_enc_s, z_dec_s, clone_s, rate_mbit, quality))
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
    spec: str,
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
        "codec": spec,
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
    stem = f"{safe_name(res['model'])}-{res['tokens']}"
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    paths[0].write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(codec_markdown(res), encoding="utf-8")
    codec_plot(res, paths[2])
    return paths
