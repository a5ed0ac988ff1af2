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
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)


def _fail(msg: str) -> None:
    err.print(f"[red]error:[/red] {msg}", soft_wrap=True)
    raise typer.Exit(2)


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{what}: expected comma-separated numbers, got {text!r}")
    if not values:
        _fail(f"{what}: empty list")
    return values


def traces_list(
    direction: Annotated[str | None, typer.Option(help="uplink or downlink (default: both)")] = None,
    folder: Annotated[Path | None, typer.Option("--dir", help="trace folder (default: <shared>/traces)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The measured throughput traces: link, technology, duration and rate statistics (Mbit/s)."""
    from scout.channel.traces import list_traces

    if direction not in (None, "uplink", "downlink"):
        _fail(f"--direction must be uplink or downlink, got {direction!r}")
    try:
        infos = list_traces(folder, direction)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
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
    console.print(table)
    console.print(f"{len(infos)} traces; rates in Mbit/s (10^6 bit/s)")


def _process(trace: str, *, seed: int, speed: float, offset: float, loop: bool, step: float) -> tuple[Any, str]:
    """The bandwidth process named by ``--trace`` and a one-line description for the report."""
    from scout.channel.markov import MarkovBandwidth, MarkovConfig, study_preset
    from scout.channel.traces import TraceReplay, load_trace

    if trace == "markov":
        cfg = study_preset(step_s=step, seed=seed)
        return MarkovBandwidth(cfg), f"Markov chain, {cfg.name} ({cfg.source}), step {step:g} s, seed {seed}"
    if trace.startswith("markov:"):
        cfg = MarkovConfig.model_validate_json(Path(trace.split(":", 1)[1]).read_text(encoding="utf-8"))
        return MarkovBandwidth(cfg), f"Markov chain {cfg.name} from {trace.split(':', 1)[1]}, seed {cfg.seed}"
    tr = load_trace(trace)
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
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("simulate-out"),
) -> None:
    """Compare policies on a request stream over a trace or the Markov chain; writes JSON, Markdown and a PNG."""
    if table_path is None:
        _fail("--table is required: the operating-point JSON measured by `scout eval` (no quality is assumed)")
    if stages_path is None and not transfer_only:
        _fail("--stages is required (stage times from `scout bench`), or pass --transfer-only")
    from pydantic import ValidationError

    from scout.policy.operating_points import OperatingPointTable
    from scout.policy.planner import StageTimes
    from scout.policy.simulate import SimConfig, StreamConfig, compare, parse_policy, request_stream, write_report

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
            context_tokens=[int(x) for x in _floats(context_tokens, "--context-tokens")],
            deadline_s=_floats(deadline, "--deadline"),
            model_pair=pair,
            seed=seed,
        )
        process, desc = _process(trace, seed=seed, speed=speed, offset=offset, loop=loop, step=markov_step)
        config = SimConfig(probe_interval_s=probe_interval or None, seed=seed)
        comparison = compare(request_stream(stream), process, table, stages, specs, config)
    except (OSError, ValueError, KeyError, ValidationError) as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        _fail(text.splitlines()[0] if text else type(exc).__name__)
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
    console.print(t)
    console.print(f"bandwidth: {desc}")
    for kind, p in paths.items():
        console.print(f"  {kind}: {p}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add ``scout traces list`` and ``scout simulate`` (nothing under ``bench``: stage times are measured by the
    benchmark commands of other modules)."""
    traces_app = typer.Typer(help="Measured 4G/5G throughput traces (../shared/traces).", no_args_is_help=True)
    traces_app.command("list")(traces_list)
    app.add_typer(traces_app, name="traces")
    app.command("simulate")(simulate_cmd)
