"""``scout bench reliability``: load, faults and hostile input against one authenticated multi-process deployment,
written to ``<out>/results.json``, ``<out>.md`` and ``<out>/latency.png``.

One run, in this order, on one `scout_testbed.testbed.Deployment` (own nats-server and redis-server with credentials,
every role its own process, SmolLM2 on both ends, short real SQuAD v2 prompts):

1. the soak (`scout_testbed.soak`) at each load level (1, 8 and 32 concurrent clients by default): sent, answered,
   typed errors, lost, duplicated, p50/p99 latency;
2. every fault scenario (`scout_testbed.faults`): the link dropping to zero, Redis restarted with blobs staged,
   nats-server restarted, ``kill -9`` of a decoder mid-request;
3. hostile input (`scout_testbed.hostile`) on every entry point, counted, each ending in a typed error (or, on
   publish-only subjects, rejected/ignored) with the service still serving.

Everything is bounded (fixed clients, requests and timeouts) and loopback only. The verdict line says whether each
part met its criterion; the run never hides a failed one (the report shows it, and the command exits non-zero).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scout.machine import machine_info
from scout_eval.markdown import markdown_table
from scout_testbed.faults import FAULTS, FaultOutcome, run_fault
from scout_testbed.hostile import ENTRY_POINTS, HostileReport, Target, run_hostile
from scout_testbed.soak import DEFAULT_MIX, SoakConfig, SoakDocument, SoakResult, load_documents, run_soak
from scout_testbed.testbed import ROLE_DEFAULTS, Deployment, deployment

__all__ = ["ReliabilityConfig", "hostile_target", "run_reliability", "run_soak_levels", "write_report"]

Progress = Callable[[str], None]


class ReliabilityConfig(BaseModel):
    """What one ``scout bench reliability`` run does (defaults: the committed report's run)."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Path("reports/reliability")
    model: str = "smollm2-135m"
    dtype: str = "fp32"
    levels: list[tuple[int, int]] = Field(default_factory=lambda: [(1, 16), (8, 4), (32, 3)])
    """(concurrent clients, requests per client) per soak level."""
    mix: tuple[str, ...] = DEFAULT_MIX
    documents: int = Field(default=16, ge=1)
    max_context_chars: int = Field(default=600, ge=50)
    max_new_tokens: int = Field(default=6, ge=1, le=64)
    faults: tuple[str, ...] = tuple(FAULTS)
    hostile_entries: tuple[str, ...] = ENTRY_POINTS
    hostile_random: int = Field(default=16, ge=0)
    """Random-byte inputs per entry point (besides the fixed corpus)."""
    decoders: int = Field(default=2, ge=2)
    seed: int = 0
    soak: bool = True
    hostile: bool = True


def hostile_target(dep: Deployment) -> Target:
    """How `scout_testbed.hostile` reaches this deployment."""
    return Target(
        settings=dep.settings(),
        http_url=dep.http_url,
        open_store=dep.store,
        policy_metrics_url=f"http://127.0.0.1:{dep.policy.ports['metrics']}/metrics",
        selector_instance=dep.selector.instance,
        alive=dep.all_alive,
        model=dep.model,
    )


async def run_soak_levels(
    dep: Deployment, docs: Sequence[SoakDocument], cfg: ReliabilityConfig, progress: Progress
) -> list[SoakResult]:
    out = []
    for i, (clients, per_client) in enumerate(cfg.levels):
        soak = SoakConfig(
            concurrency=clients,
            requests_per_client=per_client,
            mix=cfg.mix,
            max_new_tokens=cfg.max_new_tokens,
            grace_s=dep.ack_wait_s + 2.0,
            seed=cfg.seed + i,
        )
        result = await run_soak(dep.settings(), dep.http_url, docs, soak)
        progress(
            f"soak x{clients}: {result.sent} sent, {result.answered} answered, {result.errors} typed errors, "
            f"{result.lost} lost, {result.duplicated} duplicated, p50 {result.p50_s or 0:.2f} s, "
            f"p99 {result.p99_s or 0:.2f} s"
        )
        out.append(result)
    return out


def run_reliability(cfg: ReliabilityConfig, progress: Progress = lambda _: None) -> dict[str, Any]:
    """The whole run (see the module docstring); writes the report files and returns the results."""
    import torch

    from scout.models import load_model

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    docs = load_documents(cfg.documents, seed=7 + cfg.seed, max_context_chars=cfg.max_context_chars)
    lm = load_model(cfg.model, dtype=cfg.dtype, device="cpu") if cfg.hostile else None
    progress(f"{len(docs)} SQuAD v2 prompts (contexts <= {cfg.max_context_chars} chars); starting the deployment")
    soak: list[SoakResult] = []
    faults: list[FaultOutcome] = []
    hostile: HostileReport | None = None
    with deployment(model=cfg.model, dtype=cfg.dtype, decoders=cfg.decoders) as dep:
        progress(f"deployment up in {time.perf_counter() - t0:.0f} s (namespace {dep.namespace}, auth on)")

        async def main() -> None:
            nonlocal hostile
            if cfg.soak:
                soak.extend(await run_soak_levels(dep, docs, cfg, progress))
            for name in cfg.faults:
                outcome = await run_fault(name, dep, docs)
                progress(f"fault {name}: {'ok' if outcome.passed else 'FAILED'}: {outcome.outcome}")
                faults.append(outcome)
            if cfg.hostile:
                ex = docs[0]
                hostile = await run_hostile(
                    hostile_target(dep),
                    lm,
                    question=ex.question,
                    document=ex.context,
                    seed=cfg.seed,
                    random_n=cfg.hostile_random,
                    entries=cfg.hostile_entries,
                )
                progress(f"hostile: {hostile.handled}/{hostile.tried} handled, still serving: {hostile.all_serving}")

        asyncio.run(main())
        exit_codes = dep.stop_all()
    results = {
        "config": json.loads(cfg.model_dump_json()),
        "deployment": {
            "roles": ["transport_policy", "quantizer", f"cloud_decoder x{cfg.decoders}", "selector"],
            "role_settings": {k: v for k, v in ROLE_DEFAULTS.items() if not k.startswith("OTEL_")},
            "auth": "nats-server user/password; redis-server requirepass + ACL user scout-services (namespace keys)",
            "exit_codes": exit_codes,
        },
        "machine": machine_info(load_average=True),
        "seconds": time.perf_counter() - t0,
        "soak_client_timeout_s": SoakConfig(concurrency=1, requests_per_client=1).timeout_s,
        "soak": [s.model_dump() for s in soak],
        "faults": [f.model_dump() for f in faults],
        "hostile": hostile.model_dump() if hostile is not None else None,
    }
    results["verdict"] = verdict(soak, faults, hostile)
    write_report(cfg.out, results)
    return results


def verdict(
    soak: Sequence[SoakResult], faults: Sequence[FaultOutcome], hostile: HostileReport | None
) -> dict[str, Any]:
    """Per part, whether it met its criterion (zero lost and duplicated; each fault passed; every hostile input
    handled and every entry point still serving)."""
    out = {
        "soak": all(s.lost == 0 and s.duplicated == 0 for s in soak),
        "faults": all(f.passed for f in faults),
        "hostile": hostile is None or (hostile.all_handled and hostile.all_serving and hostile.roles_alive),
    }
    out["ok"] = all(out.values())
    return out


# --- the report ----------------------------------------------------------------------------------------------
def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:,.0f}"


def render_markdown(results: dict[str, Any], png_name: str, md_dir_rel: str) -> str:
    cfg, machine, v = results["config"], results["machine"], results["verdict"]
    lines = [
        "# Reliability: load, faults and hostile input",
        "",
        "Regenerate: `scout bench reliability` (needs `nats-server` and `redis-server` on PATH; it starts its own on "
        "free loopback ports, authentication on, and removes them afterwards).",
        "",
        f"Model `{cfg['model']}` ({cfg['dtype']}) at both ends, one torch thread per process; every role its own OS "
        f"process (transport policy, quantizer, {cfg['decoders']} cloud decoders, selector) against its own "
        "nats-server (JetStream, user/password) and redis-server (`requirepass`, services logged in as an ACL user "
        "confined to the deployment's keys); credentials reach the roles only as `SCOUT_*` settings. "
        f"{cfg['documents']} real SQuAD v2 prompts (contexts <= {cfg['max_context_chars']} characters), "
        f"{cfg['max_new_tokens']} new tokens. Machine: {machine['cpu_count']} CPUs, load average "
        f"{', '.join(str(x) for x in machine['load_average'])} at the end (shared: absolute times include "
        f"contention). Whole run: {results['seconds'] / 60:.1f} min.",
        "",
        f"**Verdict: {'all criteria met' if v['ok'] else 'NOT all criteria met'}** - soak (zero lost, zero "
        f"duplicated): {_yes(v['soak'])}; faults: {_yes(v['faults'])}; hostile input: {_yes(v['hostile'])}.",
        "",
        "## Soak",
        "",
        "Each client sends its requests one after another (closed loop); the request mix cycles through "
        f"{', '.join(f'`{p}`' for p in cfg['mix'])} (`auto`: the policy decides), every 4th request of a client "
        "over HTTP (`POST /v1/ask`), the rest over NATS. *Lost* = no reply of any kind before the client's timeout "
        f"({results.get('soak_client_timeout_s', 300):g} s, far longer than the services' own timeouts). "
        "*Duplicated* = more than one reply message for a "
        "request id at the client (each client has its own reply inbox, so every reply is counted) or more than one "
        "decoder result on the result subjects (an extra subscriber on `<root>.result.>`), counted after a grace "
        "period longer than the ack wait. Latency in ms over answered requests, as the client measures it: it "
        "includes queueing at the selector, so above the deployment's capacity (one selector, two decoders, "
        "sharing 2 CPUs) it grows with the number of clients.",
        "",
    ]
    rows = []
    for s in results["soak"]:
        errors = ", ".join(f"{n} {c}" for c, n in sorted(s["errors_by_code"].items())) or "0"
        rows.append(
            [
                s["concurrency"],
                f"{s['concurrency']} x {s['requests_per_client']}",
                s["sent"],
                s["answered"],
                errors,
                s["lost"],
                s["duplicated"],
                _ms(s["p50_s"]),
                _ms(s["p99_s"]),
                _ms(s["max_s"]),
                f"{s['throughput_rps']:.2f}",
            ]
        )
    lines += [
        markdown_table(
            [
                "clients",
                "requests",
                "sent",
                "answered",
                "typed errors",
                "lost",
                "duplicated",
                "p50",
                "p99",
                "max",
                "answers/s",
            ],
            rows,
        ),
        "",
        f"![latency]({md_dir_rel}/{png_name})",
        "",
    ]
    failed = Counter(
        f"`{r['point']}`: {r['code'] if r['outcome'] == 'error' else 'lost'}"
        for s in results["soak"]
        for r in s["records"]
        if r["outcome"] != "answered"
    )
    if failed:
        lines += [
            "Requests not answered, by requested point and outcome (all levels): "
            + ", ".join(f"{k} x{n}" for k, n in sorted(failed.items()))
            + ".",
            "",
        ]
    if results["soak"]:
        modes: dict[str, int] = {}
        for s in results["soak"]:
            for m, n in s["by_mode"].items():
                modes[m] = modes.get(m, 0) + n
        lines += [
            "Modes the answers came back in (all levels): "
            + ", ".join(f"{m} {n}" for m, n in sorted(modes.items(), key=lambda kv: -kv[1]))
            + ".",
            "",
        ]
    if results["faults"]:
        lines += [
            "## Faults",
            "",
            "Each scenario runs with requests in flight when the fault hits; outcomes as the clients and the result "
            "tap saw them.",
            "",
            markdown_table(
                ["fault", "expected", "what happened", "met"],
                [[f["fault"], f["expectation"], f["outcome"], _yes(f["passed"])] for f in results["faults"]],
            ),
            "",
        ]
    for f in results["faults"]:
        if f["name"] == "link_zero":
            lines += [
                "Link to zero, step by step: "
                + "; ".join(
                    f"{s['rate_bps']:g} bit/s: policy planned `{s['planned_mode']}`, "
                    + (
                        f"answered in `{s['reply_mode']}` by the {s['answered_by']}"
                        if s["reply_mode"]
                        else f"failed with `{s.get('error') or 'no reply'}`"
                    )
                    + f" in {_ms(s['latency_s'])} ms (deadline {s['deadline_s'] * 1000:.0f} ms)"
                    for s in f["details"]["steps"]
                )
                + ".",
                "",
            ]
    h = results["hostile"]
    if h is not None:
        lines += [
            "## Hostile input",
            "",
            "Per entry point: the inputs tried (by category), how many ended as required, the codes they got, and "
            "whether a well-formed request on the same entry point was served afterwards. Request/reply entry points "
            "and the decode work queue must answer with a typed `ErrorReply` of the expected code (no stack trace); "
            "`link` and `result` are publish-only (nobody to reply to): a hostile link state must be rejected by the "
            'policy (counted in its `scout_errors_total{op="link"}`, the device\'s rate unchanged) and garbage on '
            "the selector's result subject ignored while an ask in flight still gets its own answer.",
            "",
            markdown_table(
                ["entry point", "tried", "handled", "categories", "codes", "still serving"],
                [
                    [
                        e["surface"],
                        e["tried"],
                        e["handled"],
                        ", ".join(f"{k} {n}" for k, n in sorted(e["by_category"].items())),
                        ", ".join(f"{k} {n}" for k, n in sorted(e["by_code"].items())),
                        _yes(e["still_serving"]),
                    ]
                    for e in h["entries"]
                ],
            ),
            "",
            f"Total: {h['handled']}/{h['tried']} hostile inputs handled; every role process still alive: "
            f"{_yes(h['roles_alive'])}.",
            "",
        ]
        failures = [f"{e['entry']}: {x}" for e in h["entries"] for x in e["failures"]]
        if failures:
            lines += ["Not handled as required:", "", *[f"- {x}" for x in failures], ""]
    lines += [
        "## Files",
        "",
        f"`{md_dir_rel}/results.json` holds every request's record (outcome, code, latency, mode, replies seen at the "
        "client and on the result subjects) for the soak and the faults, and every count above.",
        "",
    ]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def plot(path: Path, results: dict[str, Any]) -> None:
    """Latency CDF per load level, and the outcome counts per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in results["soak"]:
        lat = sorted(r["latency_s"] for r in s["records"] if r["outcome"] == "answered" and r["latency_s"] is not None)
        if lat:
            ax1.step(lat, np.arange(1, len(lat) + 1) / len(lat), where="post", label=f"{s['concurrency']} clients")
    ax1.set_xscale("log")
    ax1.set_xlabel("latency of an answered request (s, log)")
    ax1.set_ylabel("fraction of requests")
    ax1.set_title("Soak latency (CDF)")
    ax1.grid(alpha=0.3)
    ax1.legend()
    levels = [str(s["concurrency"]) for s in results["soak"]]
    x = np.arange(len(levels))
    width = 0.2
    for i, (key, label) in enumerate(
        (("answered", "answered"), ("errors", "typed error"), ("lost", "lost"), ("duplicated", "duplicated"))
    ):
        values = [s[key] for s in results["soak"]]
        bars = ax2.bar(x + (i - 1.5) * width, values, width, label=label)
        ax2.bar_label(bars, fontsize=7)
    ax2.set_xticks(x, levels)
    ax2.set_xlabel("concurrent clients")
    ax2.set_ylabel("requests")
    ax2.set_title("Outcomes per load level")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, results: dict[str, Any]) -> tuple[Path, Path, Path]:
    """``<out>/results.json``, ``<out>/latency.png`` and ``<out>.md`` (next to the folder, linking into it)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "results.json", out / "latency.png"
    md_path = out.parent / f"{out.name}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    if results["soak"]:
        plot(png_path, results)
    md_path.write_text(render_markdown(results, png_path.name, out.name), encoding="utf-8")
    return md_path, json_path, png_path
