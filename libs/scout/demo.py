"""`scout demo`: the edge -> cloud path of a KV-mode request, in one process, on real weights and real data.

The edge prefills the prompt (minus its last token, the hand-off point), the cache is serialised into a checked
`scout-kv` blob, sent over a paced in-process link at the configured rate, verified and rebuilt on the cloud side,
and the cloud answers from it. Later releases route the same steps through the services (NATS + Redis).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table


@dataclass
class DemoResult:
    question: str
    answer: str
    local_answer: str
    gold: list[str]
    blob_bytes: int
    kv_bytes: int
    timings: dict[str, float]


def run_demo(
    console: Console,
    *,
    model: str = "smollm2-135m",
    rate_mbit: float = 100.0,
    example: int = 5,
    question: str | None = None,
    context: str | None = None,
    max_new_tokens: int = 24,
    device: str | None = None,
    dtype: str = "bf16",
) -> DemoResult:
    from scout.channel.link import PacedLink
    from scout.codec.wire import decode_blob, encode_blob
    from scout.eval.datasets import load_examples
    from scout.eval.metrics import clean_generation
    from scout.inference import generate, generate_from_cache, prefill, warmup
    from scout.models import load_model
    from scout.prompts import build_prompt

    if (question is None) != (context is None):
        raise ValueError("give both --question and --context, or neither (then a SQuAD v2 example is used)")
    gold: list[str] = []
    if question is None or context is None:
        examples = load_examples("squad_v2", n=example + 1, seed=0, answerable_only=True, max_context_chars=1200)
        ex = examples[example]
        question, context, gold = ex.question, ex.context, list(dict.fromkeys(ex.answers))
    t = {}
    with console.status(f"loading {model} …"):
        t0 = time.perf_counter()
        lm = load_model(model, dtype=dtype, device=device)
        t["load"] = time.perf_counter() - t0
        warmup(lm)
    prompt = build_prompt(lm.tokenizer, question=question, context=context)
    ids = prompt.input_ids
    console.print(f"[bold]question[/bold] {question}")
    console.print(f"[bold]context[/bold]  {len(prompt.context)} tokens of {len(ids)} ({lm.spec.name}, {lm.device})")

    # --- edge -----------------------------------------------------------------------------------------------
    edge = prefill(lm, ids[:-1])
    t["prefill (edge)"] = edge.seconds
    t0 = time.perf_counter()
    blob = encode_blob(
        edge.kv,
        model_fingerprint=lm.spec.fingerprint,
        meta={"mode": "full", "model": model},
        original_seq_len=len(ids) - 1,
    )
    t["encode"] = time.perf_counter() - t0

    # --- uplink ---------------------------------------------------------------------------------------------
    link = PacedLink(rate_bps=rate_mbit * 1e6)
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"uplink {rate_mbit:g} Mbit/s", total=len(blob))
        arrived, t["transfer"] = link.send(blob, progress=lambda n: bar.advance(task, n))

    # --- cloud ----------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    decoded = decode_blob(arrived, expected_fingerprint=lm.spec.fingerprint)
    kv = decoded.kvcache()
    t["verify + rebuild"] = time.perf_counter() - t0
    cloud = generate_from_cache(lm, kv, ids[-1:], max_new_tokens=max_new_tokens)
    t["decode (cloud)"] = sum(cloud.timings.values())
    answer = clean_generation(cloud.text)
    local = generate(lm, ids, max_new_tokens=max_new_tokens)

    table = Table("stage", "seconds", title="edge → cloud, KV mode `full` (bf16 cache, same model both ends)")
    for k, v in t.items():
        table.add_row(k, f"{v:.3f}")
    console.print(table)
    console.print(
        f"blob {len(blob):,} B (KV tensors {edge.kv.nbytes():,} B + header/positions), "
        f"sha256-verified; {len(blob) * 8 / (rate_mbit * 1e6):.3f}s at {rate_mbit:g} Mbit/s by arithmetic"
    )
    console.print(f"[bold green]answer (from the rebuilt cache)[/bold green] {answer!r}")
    same = "identical" if cloud.token_ids == local.token_ids else "DIFFERENT"
    console.print(f"local answer on the edge: {clean_generation(local.text)!r} ({same} tokens)")
    if gold:
        console.print(f"gold: {gold}")
    return DemoResult(
        question=question,
        answer=answer,
        local_answer=clean_generation(local.text),
        gold=gold,
        blob_bytes=len(blob),
        kv_bytes=edge.kv.nbytes(),
        timings=t,
    )
