"""`scout eval run EXPERIMENT …` and `scout eval report`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from scout_cli.console import console, fail, parse_floats, say


def register(app: typer.Typer, bench: typer.Typer) -> None:
    eval_app = typer.Typer(
        help="Reproduce the study's tables on real data and models (resumable).", no_args_is_help=True
    )
    app.add_typer(eval_app, name="eval")

    @eval_app.command("run")
    def run(
        experiment: Annotated[str, typer.Argument(help="selection | quantization | combined | scout")],
        dataset: Annotated[str, typer.Option(help="squad_v2, triviaqa, hotpotqa, mmlu, …")] = "squad_v2",
        model: Annotated[str, typer.Option("--model", "-m", help="(edge) model")] = "qwen2.5-coder-0.5b",
        cloud_model: Annotated[str | None, typer.Option(help="cloud model (scout experiment)")] = None,
        n: Annotated[int, typer.Option(help="samples (seeded, deterministic)")] = 200,
        seed: Annotated[int, typer.Option()] = 0,
        limit: Annotated[int | None, typer.Option(help="stop after this many new samples")] = None,
        retentions: Annotated[str | None, typer.Option(help="e.g. 0.1,0.25,0.5,0.75")] = None,
        methods: Annotated[str | None, typer.Option(help="selection methods, comma-separated")] = None,
        codecs: Annotated[str | None, typer.Option(help="bf16,int8,int4,int2,mixed@<plan.json>")] = None,
        application: Annotated[
            str, typer.Option(help="evict (what Scout's KV modes send), mask (the study's), or drop")
        ] = "evict",
        max_new_tokens: Annotated[int, typer.Option()] = 16,
        max_context_chars: Annotated[int, typer.Option(help="skip longer contexts (0 = no limit)")] = 3000,
        out: Annotated[Path, typer.Option(help="results root")] = Path("reports/eval"),
        device: Annotated[str | None, typer.Option()] = None,
        dtype: Annotated[str, typer.Option(help="auto: bf16 where the hardware has it, else fp32")] = "auto",
        source: Annotated[
            str,
            typer.Option(
                help="file (the data directory, else the packaged sample), sample (the packaged sample), "
                "or hub (the full set; needs the 'hub' extra and network)"
            ),
        ] = "file",
        data_dir: Annotated[
            Path | None,
            typer.Option(help="data directory with data/<dataset>/*.jsonl (default: $SCOUT_DATA, then the user's)"),
        ] = None,
    ) -> None:
        """Run an experiment, appending one result line per sample; rerun the same command to continue."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from scout.dataroot import DataNotFound, using_data_dir
        from scout.models import preferred_dtype
        from scout_eval.hub import HubUnavailable
        from scout_eval.runner import RunConfig, run_experiment

        if dtype == "auto":
            dtype = preferred_dtype(device)

        # Only the selection experiment applies a selection to the model's own prompt (scout is masked by design).
        options: dict[str, object] = {"application": application} if experiment == "selection" else {}
        if retentions:
            options["retentions"] = parse_floats(retentions, "--retentions")
        if methods:
            options["methods"] = [m for m in methods.split(",") if m]
        if codecs:
            options["codecs"] = [c for c in codecs.split(",") if c]
        cfg = RunConfig(
            experiment=experiment,
            dataset=dataset,
            model=model,
            cloud_model=cloud_model,
            n=n,
            seed=seed,
            out_root=out,
            max_new_tokens=max_new_tokens,
            max_context_chars=max_context_chars or None,
            device=device,
            dtype=dtype,
            options=options,
            source=source,
        )
        cols = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*cols, console=console) as bar:
            task = bar.add_task(f"{experiment} {cfg.run_name}", total=None)

            def tick(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            try:
                with using_data_dir(data_dir):
                    run_dir = run_experiment(
                        cfg, limit=limit, progress=tick, command=["scout", *sys.argv[1:]], notify=say
                    )
            except (ValueError, DataNotFound, HubUnavailable) as e:
                fail(str(e))
        console.print(f"[green]results[/green] {run_dir}/samples.jsonl — `scout eval report` to (re)build reports")

    @eval_app.command("report")
    def report(
        out: Annotated[Path, typer.Option(help="results root")] = Path("reports/eval"),
        stages_dir: Annotated[
            Path | None, typer.Option(help="stage times for the latency breakdown (default: <out>/../stages)")
        ] = None,
        latency_tokens: Annotated[int, typer.Option(help="context tokens of the latency breakdown")] = 512,
    ) -> None:
        """Regenerate every table and plot from the saved per-sample results."""
        from scout_eval.report import write_reports

        summaries = write_reports(out)
        from scout_eval.claims import write_claims
        from scout_eval.figures import write_figures
        from scout_eval.latency import write_latency

        claims = write_claims(out)
        figures = write_figures(out, summaries)
        latency = write_latency(out, stages_dir or out.parent / "stages", context_tokens=latency_tokens)
        for s in summaries:
            console.print(f"  {s['experiment']}/{s['run']}: n={s['n']}")
        for c in claims:
            console.print(f"  claim {c.key}: {c.verdict}")
        for name, status in latency.items():
            console.print(f"  latency {name}: {status}")
        console.print(
            f"[green]written[/green] {out}/README.md, CLAIMS.md, {len(figures)} figures and one report.md + plot.png "
            "per run"
        )
