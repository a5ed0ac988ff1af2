"""`scout traces list` and `scout simulate`: the bandwidth processes and the adaptive policy from the command line.

`scout simulate` replays a request stream over a measured trace or the Markov chain and compares policies
(adaptive on an estimator, robust, static points, and the oracle). It needs the operating-point table that
``scout eval`` measures (``--table``): the qualities it plans with are measurements, so the command refuses to
run without one rather than invent them. Stage times (``--stages``, from ``scout bench``) are needed too, or
``--transfer-only`` to plan on transfer time alone, which the report then says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from scout_cli.console import console, fail, parse_floats, print_table, say

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="data directory with traces/*.csv (default: $SCOUT_DATA, then the user's)"),
]


def traces_list(
    direction: Annotated[str | None, typer.Option(help="uplink or downlink (default: both)")] = None,
    folder: Annotated[
        Path | None, typer.Option("--dir", help="one trace folder only (default: the data directory's and packaged)")
    ] = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The measured throughput traces: link, technology, duration and rate statistics (Mbit/s)."""
    from scout.channel.traces import list_traces

    if direction not in (None, "uplink", "downlink"):
        fail(f"--direction must be uplink or downlink, got {direction!r}")
    try:
        infos = list_traces(folder, direction, data_dir=data_dir)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        console.print_json(data=[i.model_dump() for i in infos])
        return
    table = Table("trace", "dir", "gen", "link", "step s", "duration s", "mean", "median", "p10", "p90", "zero %")
    for i in infos:
        table.add_row(
            i.name,
            "UL" if i.direction == "uplink" else "DL" if i.direction == "downlink" else "?",
            i.generation,
            i.link,
            f"{i.step_s:g}",
            f"{i.duration_s:g}",
            f"{i.mean_mbps:.2f}",
            f"{i.median_mbps:.2f}",
            f"{i.p10_mbps:.2f}",
            f"{i.p90_mbps:.2f}",
            f"{100 * i.zero_fraction:.1f}",
        )
    print_table(table)
    console.print(f"{len(infos)} traces; rates in Mbit/s (10^6 bit/s)")


def _process(
    trace: str, *, seed: int, speed: float, offset: float, loop: bool, step: float, data_dir: Path | None = None
) -> tuple[Any, str]:
    """The bandwidth process named by ``--trace`` and a one-line description for the report."""
    from scout.channel.markov import MarkovBandwidth, MarkovConfig, study_preset
    from scout.channel.traces import TraceReplay, load_trace

    if trace == "markov":
        cfg = study_preset(step_s=step, seed=seed)
        return MarkovBandwidth(cfg), f"Markov chain, {cfg.name} ({cfg.source}), step {step:g} s, seed {seed}"
    if trace.startswith("markov:"):
        cfg = MarkovConfig.model_validate_json(Path(trace.split(":", 1)[1]).read_text(encoding="utf-8"))
        return MarkovBandwidth(cfg), f"Markov chain {cfg.name} from {trace.split(':', 1)[1]}, seed {cfg.seed}"
    tr = load_trace(trace, data_dir=data_dir)
    desc = (
        f"trace {tr.name} ({tr.info.direction}, {tr.info.link or tr.info.generation}), speed {speed:g}, "
        f"offset {offset:g} s, {'looped' if loop else 'not looped'}"
    )
    return TraceReplay(tr, speed=speed, offset_s=offset, loop=loop), desc


def simulate_cmd(
    trace: Annotated[str, typer.Option("--trace", help="trace name, `markov` (study preset) or markov:CONFIG.json")],
    table_path: Annotated[
        Path | None, typer.Option("--table", help="operating-point table JSON (measured by `scout eval`)")
    ] = None,
    stages_path: Annotated[Path | None, typer.Option("--stages", help="stage times JSON (from `scout bench`)")] = None,
    transfer_only: Annotated[
        bool, typer.Option("--transfer-only", help="no stage times: plan on transfer time alone")
    ] = False,
    model_pair: Annotated[str | None, typer.Option(help="model pair in the table (default: its only one)")] = None,
    policies: Annotated[
        str, typer.Option(help="comma list: adaptive[:estimator], robust[:q[:k]], static:<point>, oracle")
    ] = "adaptive:ewma,adaptive:harmonic,robust,oracle",
    requests: Annotated[int, typer.Option(help="number of requests")] = 200,
    interarrival: Annotated[float, typer.Option(help="mean seconds between requests")] = 5.0,
    arrivals: Annotated[str, typer.Option(help="poisson or fixed")] = "poisson",
    context_tokens: Annotated[str, typer.Option(help="comma list of context lengths to draw from")] = "1024",
    deadline: Annotated[str, typer.Option(help="comma list of deadlines (s) to draw from")] = "2.0",
    seed: Annotated[int, typer.Option(help="seed of the request stream and the Markov chain")] = 0,
    speed: Annotated[float, typer.Option(help="trace replay speed")] = 1.0,
    offset: Annotated[float, typer.Option(help="trace replay offset, s")] = 0.0,
    loop: Annotated[bool, typer.Option("--loop/--no-loop", help="loop the trace")] = True,
    markov_step: Annotated[float, typer.Option(help="Markov step duration, s")] = 1.0,
    probe_interval: Annotated[float, typer.Option(help="rate probe interval, s (0: goodput only)")] = 1.0,
    plan_after_prefill: Annotated[
        bool,
        typer.Option(
            "--plan-after-prefill/--plan-at-arrival", help="plan once the edge prefill is done, as the pipeline does"
        ),
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("simulate-out"),
    data_dir: DataDirOption = None,
) -> None:
    """Compare policies on a request stream over a trace or the Markov chain; writes JSON, Markdown and a PNG."""
    if table_path is None:
        fail("--table is required: the operating-point JSON measured by `scout eval` (no quality is assumed)")
    if stages_path is None and not transfer_only:
        fail("--stages is required (stage times from `scout bench`), or pass --transfer-only")
    from pydantic import ValidationError

    from scout.policy.operating_points import OperatingPointTable
    from scout.policy.planner import StageTimes
    from scout_eval.simulate import SimConfig, StreamConfig, compare, parse_policy, request_stream, write_report

    try:
        table = OperatingPointTable.load(table_path)
        pair = table.resolve_pair(model_pair)
        if stages_path is not None:
            stages = StageTimes.load(stages_path)
        else:
            stages = StageTimes.transfer_only(pair, {p.mode for p in table.for_pair(pair)})
        specs = [parse_policy(p.strip()) for p in policies.split(",") if p.strip()]
        if arrivals not in ("poisson", "fixed"):
            raise ValueError(f"--arrivals must be poisson or fixed, got {arrivals!r}")
        stream = StreamConfig(
            n_requests=requests,
            mean_interarrival_s=interarrival,
            arrivals=arrivals,  # type: ignore[arg-type]
            context_tokens=[int(x) for x in parse_floats(context_tokens, "--context-tokens")],
            deadline_s=parse_floats(deadline, "--deadline"),
            model_pair=pair,
            seed=seed,
        )
        process, desc = _process(
            trace, seed=seed, speed=speed, offset=offset, loop=loop, step=markov_step, data_dir=data_dir
        )
        config = SimConfig(probe_interval_s=probe_interval or None, seed=seed, plan_after_prefill=plan_after_prefill)
        comparison = compare(request_stream(stream), process, table, stages, specs, config)
    except (OSError, ValueError, KeyError, ValidationError) as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        fail(text.splitlines()[0] if text else type(exc).__name__)
    meta = {
        "bandwidth": desc,
        "operating points": f"{table_path} ({table.metric}; {table.source or 'no source given'}), pair {pair}",
        "stage times": str(stages_path) if stages_path is not None else "none: transfer time only (--transfer-only)",
        "requests": (
            f"{requests}, {arrivals} arrivals every {interarrival:g} s on average, context tokens {context_tokens}, "
            f"deadlines {deadline} s, seed {seed}"
        ),
        "estimator inputs": (f"rate probes every {probe_interval:g} s" if probe_interval else "no rate probes")
        + f", goodput of transfers >= {config.min_goodput_bytes} B",
        "command": " ".join(
            [
                "scout simulate",
                f"--trace {trace}",
                f"--table {table_path}",
                f"--stages {stages_path}" if stages_path is not None else "--transfer-only",
                f"--model-pair '{pair}'",
                f"--policies {policies}",
                f"--requests {requests} --interarrival {interarrival:g} --arrivals {arrivals}",
                f"--context-tokens {context_tokens} --deadline {deadline} --seed {seed}",
                f"--speed {speed:g} --offset {offset:g} {'--loop' if loop else '--no-loop'}",
                f"--markov-step {markov_step:g} --probe-interval {probe_interval:g}",
                "--plan-after-prefill" if plan_after_prefill else "--plan-at-arrival",
            ]
        ),
    }
    paths = write_report(comparison, process, out, meta)
    t = Table("policy", "met %", "95 % CI", "quality", "fallback %", "p95 s", "gap met pp")
    t.columns[0].min_width = max(len(s.policy) for s in comparison.summaries())
    for s in comparison.summaries():
        gap = comparison.gaps_to_oracle[s.policy]
        t.add_row(
            s.policy,
            f"{s.met_pct:.1f}",
            f"{s.met_ci_pct[0]:.1f}-{s.met_ci_pct[1]:.1f}",
            f"{s.mean_quality:.3f}",
            f"{s.fallback_pct:.1f}",
            f"{s.latency_p95_s:.3f}",
            f"{gap['met_pct']:+.1f}",
        )
    print_table(t)
    console.print(f"bandwidth: {desc}")
    for kind, p in paths.items():
        console.print(f"  {kind}: {p}")


def bench_stages(
    edge_model: Annotated[str, typer.Option("--edge-model", help="edge model (alias, folder or HF id)")],
    cloud_model: Annotated[str, typer.Option("--cloud-model", help="cloud model")],
    lengths: Annotated[str, typer.Option(help="comma list of context lengths, tokens (at least two)")] = "256,512,1024",
    repeats: Annotated[int, typer.Option(help="repeats per length (medians)")] = 3,
    max_new_tokens: Annotated[int, typer.Option(help="generation budget the generate stage is sized for")] = 16,
    codecs: Annotated[
        str | None,
        typer.Option(help="comma list of KV codecs, the eval runs' names; {model} = each model (default: the runs')"),
    ] = None,
    kv_models: Annotated[
        str | None, typer.Option(help="models whose KV path is timed (default: edge and cloud)")
    ] = None,
    text: Annotated[
        bool, typer.Option("--text/--no-text", help="also time text mode (a second cloud prefill)")
    ] = False,
    dtype: Annotated[str, typer.Option(help="compute dtype (the eval runs' own: fp32 or bf16)")] = "fp32",
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("reports/stages"),
) -> None:
    """Time prefill, score, encode, decode and generate per mode with the real pipeline functions at several
    context lengths; fit each stage linearly in the context length; write the planner's StageTimes JSON."""
    from pydantic import ValidationError

    from scout_cli.benchmarks.stages import StagesBenchConfig, run_stages_bench

    try:
        cfg = StagesBenchConfig(
            edge_model=edge_model,
            cloud_model=cloud_model,
            lengths=[int(x) for x in parse_floats(lengths, "--lengths")],
            repeats=repeats,
            max_new_tokens=max_new_tokens,
            **({"codecs": [c.strip() for c in codecs.split(",") if c.strip()]} if codecs else {}),
            kv_models=[m.strip() for m in kv_models.split(",") if m.strip()] if kv_models else None,
            text=text,
            dtype=dtype,
            threads=threads,
            out=out,
        )
    except ValidationError as exc:
        fail(str(exc).splitlines()[0])
    result = run_stages_bench(cfg, progress=lambda m: console.print(f"  {m}"))
    for name in result["files"]:
        console.print(f"[green]written[/green] {out / name}")
    console.print(f"  report: {out / result['report']} ({result['seconds']:.0f} s)")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add ``scout traces list``, ``scout simulate``, ``scout simulate-suite`` and ``scout bench stages``."""
    traces_app = typer.Typer(
        help="Measured 4G/5G throughput traces (the data directory's and the packaged ones).", no_args_is_help=True
    )
    traces_app.command("list")(traces_list)
    app.add_typer(traces_app, name="traces")
    app.command("simulate")(simulate_cmd)
    app.command("simulate-suite")(simulate_suite_cmd)
    bench.command("stages")(bench_stages)


# ----------------------------------------------------------------------------------------------------------------
# scout simulate-suite
# ----------------------------------------------------------------------------------------------------------------
def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _suite_inputs(
    tables: list[Path], stages: list[Path], eval_root: Path | None, pairs: list[str], stages_dir: Path, inputs: Path
) -> tuple[list[tuple[Any, str, Any]], list[str], list[str]]:
    """(table, pair, stage times) triples, a line per input file for the README, and notes on pairs left out; a
    copy of every table and stage file used lands in ``inputs`` (stage files as ``stages__<name>``)."""
    from scout.policy.operating_points import OperatingPointTable
    from scout.policy.planner import StageTimes
    from scout_cli.benchmarks.stages import stage_file_name
    from scout_eval.op_tables import NoMeasuredPoints, build_pair_table, collect_runs, table_file_name

    loaded: list[tuple[Any, Path]] = [(OperatingPointTable.load(t), t) for t in tables]
    notes: list[str] = []
    if eval_root is not None:
        runs = collect_runs(eval_root)
        for text in pairs:
            edge, _, cloud = text.partition(":")
            cloud = cloud or edge
            try:
                table = build_pair_table(runs, edge, cloud)
            except (NoMeasuredPoints, ValueError, OSError, RuntimeError) as exc:
                notes.append(f"{edge}->{cloud}: not simulated ({str(exc).splitlines()[0]})")
                continue
            path = table.save(inputs / table_file_name(edge, cloud))
            loaded.append((table, path))
            stage_path = stages_dir / stage_file_name(edge, cloud)
            if stage_path not in stages:
                stages.append(stage_path)
    by_pair: dict[str, tuple[Any, Path]] = {}
    for s in stages:
        if s.is_file():
            st = StageTimes.load(s)
            by_pair[st.model_pair] = (st, s)
    out, files = [], []
    for table, path in loaded:
        for pair in table.pairs():
            if pair not in by_pair:
                notes.append(f"{pair}: not simulated (no stage times for it among {', '.join(map(str, stages))})")
                continue
            st, s_path = by_pair[pair]
            out.append((table, pair, st))
            files.append(f"table `{path}` (sha256 {_sha(path)}…), stage times `{s_path}` (sha256 {_sha(s_path)}…)")
            for src, name in ((path, path.name), (s_path, f"stages__{s_path.name}")):
                if src.resolve() != (inputs / name).resolve():
                    (inputs / name).write_bytes(src.read_bytes())
    return out, files, notes


def simulate_suite_cmd(
    tables: Annotated[
        list[Path] | None, typer.Option("--table", help="operating-point table JSON (repeat for more pairs)")
    ] = None,
    stages: Annotated[list[Path] | None, typer.Option("--stages", help="stage times JSON (repeat)")] = None,
    eval_root: Annotated[
        Path | None, typer.Option(help="build the tables from the eval runs here (with --pair)")
    ] = None,
    pairs: Annotated[
        list[str] | None, typer.Option("--pair", help="EDGE:CLOUD (or MODEL) to build from --eval-root (repeat)")
    ] = None,
    stages_dir: Annotated[Path, typer.Option(help="where --pair looks for <edge>__<cloud>.json")] = Path(
        "reports/stages"
    ),
    traces: Annotated[
        str | None, typer.Option(help="comma list: markov and trace names (default: the suite's DEFAULT_TRACES)")
    ] = None,
    context_tokens: Annotated[int, typer.Option(help="context length of every request")] = 512,
    extra_tokens: Annotated[
        int, typer.Option(help="prompt tokens around the context (instruction, question), sent in full by KV modes")
    ] = 0,
    slacks: Annotated[str, typer.Option(help="comma list: deadline = compute of full + slack (s)")] = "0.5,1,2,4",
    requests: Annotated[int, typer.Option(help="requests per trace")] = 200,
    interarrival: Annotated[float, typer.Option(help="mean seconds between requests")] = 5.0,
    seed: Annotated[int, typer.Option(help="seed of requests and the Markov chain")] = 0,
    cell_trace: Annotated[
        str | None, typer.Option(help="trace of the multi-device cell (default: the suite's, if imported)")
    ] = None,
    cell_capacity: Annotated[float, typer.Option(help="static cell capacity, Mbit/s")] = 50.0,
    cell_devices: Annotated[int, typer.Option(help="devices in the cell")] = 4,
    cell_slack: Annotated[float, typer.Option(help="cell deadline slack over compute, s")] = 1.0,
    transfer_only_too: Annotated[
        bool, typer.Option("--transfer-only-too/--measured-only", help="also run with zero compute")
    ] = True,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("reports/simulate"),
    data_dir: DataDirOption = None,
) -> None:
    """Every policy (static full/int8/int4/mixed/scout, adaptive per estimator, robust, oracle) on the Markov
    preset and measured uplink traces, plus the multi-device cell; JSON, Markdown and PNG, and a README."""
    import shlex

    from pydantic import ValidationError

    from scout.dataroot import using_data_dir
    from scout.policy.planner import StageTimes
    from scout_eval.suite import SuiteConfig, resolve_default_traces, run_suite
    from scout_eval.suite_report import write_readme

    if traces is None or cell_trace is None:
        defaults = resolve_default_traces(data_dir)
        if defaults.note:
            say(f"traces: {defaults.note}")
        traces = traces or ",".join(defaults.traces)
        cell_trace = cell_trace or defaults.cell_trace

    if not tables and eval_root is None:
        fail("give --table/--stages, or --eval-root with --pair")
    out.mkdir(parents=True, exist_ok=True)
    inputs = out / "inputs"
    inputs.mkdir(exist_ok=True)
    try:
        triples, files, notes = _suite_inputs(
            list(tables or []), list(stages or []), eval_root, list(pairs or []), stages_dir, inputs
        )
        if not triples:
            fail("nothing to simulate: " + "; ".join(notes or ["no table with matching stage times"]))
        cfg = SuiteConfig(
            traces=[t.strip() for t in traces.split(",") if t.strip()],
            context_tokens=context_tokens,
            extra_tokens=extra_tokens,
            slacks_s=parse_floats(slacks, "--slacks"),
            requests=requests,
            interarrival_s=interarrival,
            seed=seed,
            cell_devices=cell_devices,
            cell_capacity_bps=cell_capacity * 1e6,
            cell_slack_s=cell_slack,
            cell_trace=cell_trace,
        )
        with using_data_dir(data_dir):
            summaries = {
                "measured": run_suite(triples, cfg, out / "measured", progress=lambda m: console.print(f"  {m}"))
            }
            if transfer_only_too:
                zero = [(t, p, StageTimes.transfer_only(p, s.modes)) for t, p, s in triples]
                summaries["transfer_only"] = run_suite(
                    zero,
                    cfg,
                    out / "transfer_only",
                    label="transfer only: ",
                    progress=lambda m: console.print(f"  {m}"),
                )
    except (OSError, ValueError, KeyError, ValidationError) as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        fail(text.splitlines()[0] if text else type(exc).__name__)
    parts = [f"--table {t}" for t in tables or []] + [f"--stages {st}" for st in stages or []]
    if eval_root is not None:
        parts += [f"--eval-root {eval_root}", *(f"--pair {p}" for p in pairs or []), f"--stages-dir {stages_dir}"]
    parts += [
        f"--traces {traces}",
        f"--context-tokens {context_tokens} --extra-tokens {extra_tokens} --slacks {slacks} --requests {requests}",
        f"--interarrival {interarrival:g} --seed {seed}",
        f"--cell-trace {cell_trace} --cell-capacity {cell_capacity:g} --cell-devices {cell_devices}",
        f"--cell-slack {cell_slack:g}",
        "--transfer-only-too" if transfer_only_too else "--measured-only",
        f"--out {out}",
    ]
    command = "scout simulate-suite " + " ".join(shlex.quote(x) if " " not in x else x for x in parts)
    sources = [st.source for _, _, st in triples]
    readme = write_readme(out, summaries, command=command, files=files, notes=notes, stage_sources=sources)
    console.print(f"[green]written[/green] {readme}")
