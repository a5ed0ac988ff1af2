"""`scout calibrate` (per-layer bottleneck search, saves a mixed-precision plan) and `scout bench codec`.

Typer wiring and the calibration table only: the calibration is `scout.codec.calibrate`, the benchmark
`scout_cli.benchmarks.codec`. Torch and the models are imported inside the commands, so registering them (and
`scout --help`) stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from scout_cli.benchmarks.codec import DEFAULT_BENCH_DIR
from scout_cli.console import console, fail, print_table

if TYPE_CHECKING:
    from scout.codec.calibrate import CalibrationResult


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
    print_table(table, out=out)
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
    print_table(curve, out=out)
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
        fail("--quantizer must be kivi or study")
    if answers not in ("greedy", "gold"):
        fail("--answers must be greedy or gold")
    if n < 1:
        fail("--n must be >= 1")
    import torch

    from scout.codec.calibrate import calibrate, calibration_prompts, plan_with_provenance
    from scout.codec.quant import study_spec
    from scout.models import ModelNotAvailable, load_model
    from scout_cli.benchmarks.codec import default_plan_path

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
        fail(str(exc))
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
    from scout_cli.benchmarks.codec import run_codec_bench, write_codec_report

    if threads < 1:
        fail("--threads must be >= 1")
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
        fail(str(exc))
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
    print_table(table)
    console.print(f"clone of the same tensors: {res['clone_s'] * 1e3:.1f} ms; rate {rate:g} Mbit/s")
    for p in write_codec_report(res, out):
        console.print(f"wrote {p}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `scout calibrate` to the top level and `scout bench codec` to the bench group."""
    app.command("calibrate")(calibrate_cmd)
    bench.command("codec")(bench_codec_cmd)
