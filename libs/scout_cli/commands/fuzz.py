"""`scout bench fuzz`: every parser fuzzed, with counts per outcome (issue 22).

The work is in `scout_testbed.fuzz` (the test harness, a distribution of its own that the image does not have;
imported inside the command, so `scout --help` never loads it). Coverage-guided with atheris when it is installed
(``pip install -e '.[test]'``), else the harness's own deterministic mutator. Each target runs in chunks, and the
results are written after every target, so ``--resume`` picks up an interrupted run where it stopped. Inputs that
escape untyped are saved into the corpus folder, where the CI test replays them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from scout_cli.benchmarks.common import needs_harness
from scout_cli.console import console, fail, print_table

OUTCOME_COLORS = {
    "accepted": "#4c72b0",
    "rejected": "#55a868",
    "untyped": "#c44e52",
    "slow": "#dd8452",
    "memory": "#8172b3",
}


def _write(out: Path, report: dict[str, Any]) -> None:
    """results.json, fuzz.md and outcomes.png (a stacked bar of outcomes per target, log scale)."""
    from scout_eval.markdown import markdown_table

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [
        [r["target"], r["inputs"], *r["counts"].values(), r["inputs_per_s"], r["slowest_s"], r["rss_growth_mb"]]
        for r in report["targets"].values()
    ]
    header = ["target", "inputs", "accepted", "typed rejection", "other exception", "over 1 s", "over 256 MB"]
    header += ["inputs/s", "slowest (s)", "peak RSS growth (MB)"]
    failures = [f"- `{r['target']}`: {f['error']}" for r in report["targets"].values() for f in r["failures"][:5]]
    m = report["machine"]
    text = [
        "# Fuzzing every parser (`scout bench fuzz`)",
        "",
        f"Engine: **{report['engine']}**, seed {report['seed']}, {report['inputs_per_target']} inputs per target; "
        f"{m.get('cpu_count', '?')} CPUs, Python {m.get('python', '?')}, torch {m.get('torch', '?')}.",
        "Outcomes: accepted; typed rejection (the parser's own error); other exception (a bug); over 1 s; over "
        "256 MB (peak RSS grew by more during one input; the last column bounds every input of the target).",
        "",
        markdown_table(header, rows),
        "",
        "Untyped failures: " + ("none." if not failures else "\n" + "\n".join(failures)),
        "",
    ]
    (out / "fuzz.md").write_text("\n".join(text))
    _plot(out / "outcomes.png", report)


def _plot(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["targets"])
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(names) + 1.5))
    left = [0.0] * len(names)
    for outcome, color in OUTCOME_COLORS.items():
        widths = [report["targets"][n]["counts"][outcome] for n in names]
        ax.barh(names, widths, left=left, color=color, label=outcome)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlabel("inputs")
    ax.invert_yaxis()
    ax.set_title(f"scout bench fuzz: outcomes per target ({report['engine']})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6 / (0.35 * len(names) + 1.5)), ncol=5, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fuzz_command(
    inputs: Annotated[int, typer.Option("--inputs", help="inputs per target")] = 100_000,
    target: Annotated[list[str] | None, typer.Option(help="a target (repeatable); default every target")] = None,
    engine: Annotated[str, typer.Option(help="auto (atheris when installed), atheris or python")] = "auto",
    seed: Annotated[int, typer.Option(help="seed of the mutations (a run is reproducible from it)")] = 0,
    chunk: Annotated[int, typer.Option(help="inputs per chunk of the python engine (progress granularity)")] = 5000,
    out: Annotated[Path, typer.Option(help="report folder")] = Path("reports/fuzz"),
    corpus: Annotated[Path, typer.Option(help="saved corpus: read as seeds, untyped inputs added")] = Path(
        "tests/fuzz/corpus"
    ),
    resume: Annotated[
        bool, typer.Option(help="keep finished targets of OUT/results.json (named --target ones run again)")
    ] = False,
) -> None:
    """Fuzz every parser (wire blobs, delta and zstd frames, position sets, plan files, every bus message, trace
    CSVs, dataset JSONL) from mutations of valid encodings; counts per outcome, inputs/s; JSON + Markdown + PNG."""
    try:
        from scout_testbed.fuzz import Result, atheris_available, fuzz, load_corpus, run_atheris, save_input
        from scout_testbed.fuzz_targets import targets
    except ModuleNotFoundError as e:
        needs_harness(e, "scout bench fuzz")
    from rich.progress import Progress

    from scout.machine import machine_info

    if inputs < 1 or chunk < 1:
        fail("--inputs and --chunk must be >= 1")
    if engine not in ("auto", "atheris", "python"):
        fail("--engine must be auto, atheris or python")
    if engine == "auto":
        engine = "atheris" if atheris_available() else "python"
    elif engine == "atheris" and not atheris_available():
        fail("atheris is not installed: pip install atheris (or use --engine python)")
    all_targets = targets()
    names = target or list(all_targets)
    if unknown := sorted(set(names) - set(all_targets)):
        fail(f"unknown target(s) {unknown}; known: {', '.join(all_targets)}")
    report: dict[str, Any] = {"engine": engine, "seed": seed, "inputs_per_target": inputs, "targets": {}}
    previous = out / "results.json"
    if resume and previous.exists():
        old = json.loads(previous.read_text())
        if (old.get("engine"), old.get("seed"), old.get("inputs_per_target")) == (engine, seed, inputs):
            # Every finished target stays in the report; a target named with --target runs again (after a fix).
            report["targets"] = {k: v for k, v in old["targets"].items() if not target or k not in names}
    report["machine"] = machine_info(load_average=True)
    started = time.perf_counter()
    with Progress(console=console) as bar:
        for name in names:
            if name in report["targets"]:
                continue
            task = bar.add_task(name, total=inputs)
            saved = load_corpus(corpus, name)
            if engine == "atheris":
                result = run_atheris(
                    name, inputs, seed=seed, corpus=corpus, progress=lambda k, t=task: bar.update(t, completed=k)
                )
            else:
                result = Result(name)
                for i, start in enumerate(range(0, inputs, chunk)):
                    part = fuzz(all_targets[name], min(chunk, inputs - start), seed=seed * 1_000_003 + i, corpus=saved)
                    result.merge(part)
                    bar.update(task, completed=result.inputs)
            bar.update(task, completed=inputs)
            for data, _ in result.failures:
                save_input(corpus, name, data)
            report["targets"][name] = result.to_json()
            report["wall_s"] = round(time.perf_counter() - started, 1)
            _write(out, report)
    table = Table("target", "inputs", "accepted", "rejected", "untyped", "slow", "memory", "inputs/s")
    for n, r in report["targets"].items():
        table.add_row(n, str(r["inputs"]), *(str(v) for v in r["counts"].values()), str(r["inputs_per_s"]))
    print_table(table)
    console.print(f"[green]written[/green] {out}/fuzz.md, {out}/results.json, {out}/outcomes.png")
    bad = sum(r["counts"]["untyped"] + r["counts"]["slow"] + r["counts"]["memory"] for r in report["targets"].values())
    if bad:
        console.print(f"[red]{bad} inputs escaped untyped, ran over 1 s or over 256 MB[/red] (saved under {corpus})")
        raise typer.Exit(1)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    del app
    bench.command("fuzz")(fuzz_command)
