"""The simulation suite (`scout_eval.suite`) and the stage-time fitting it consumes (`scout_cli.benchmarks.stages`).

Tables, stage times and measurement records are constructed for the test; nothing here is a measurement.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scout.channel.process import StepProcess
from scout.dataroot import using_data_dir
from scout.policy.allocator import allocate_brute_force
from scout.policy.operating_points import OperatingPoint, OperatingPointTable
from scout.policy.planner import ModeStages, StageCost, StageTimes
from scout_cli.benchmarks.stages import build_stage_times, fit_linear
from scout_eval.suite import (
    DEFAULT_CELL_TRACE,
    DEFAULT_TRACES,
    SuiteConfig,
    deadline_list,
    default_policies,
    resolve_default_traces,
    restrict_table,
    run_suite,
)
from scout_eval.suite_cell import CellDevice, run_cell_static, run_cell_trace
from scout_eval.suite_report import digest, headline, write_readme


# ----------------------------------------------------------------------------------------------------------------
# stage times from measurements
# ----------------------------------------------------------------------------------------------------------------
def test_fit_linear_recovers_a_line_and_stays_non_negative() -> None:
    cost, resid = fit_linear([256, 512, 1024], [0.1 + 0.002 * n for n in (256, 512, 1024)])
    assert cost.fixed_s == pytest.approx(0.1) and cost.per_token_s == pytest.approx(0.002) and resid < 1e-9
    flat, _ = fit_linear([256, 512, 1024], [0.30, 0.20, 0.25])  # noise with a negative slope: a constant
    assert (flat.fixed_s, flat.per_token_s) == (pytest.approx(0.25), 0.0)
    through0, _ = fit_linear([100, 200], [0.1, 0.5])  # would cross below 0: a line through the origin
    assert through0.fixed_s == 0.0 and through0.per_token_s == pytest.approx((100 * 0.1 + 200 * 0.5) / 50_000)
    single, _ = fit_linear([512], [0.4])
    assert (single.fixed_s, single.per_token_s) == (0.4, 0.0)
    with pytest.raises(ValueError):
        fit_linear([1, 2], [0.1, -0.1])


def records() -> list[dict[str, object]]:
    """What the bench records, with times chosen on exact lines: edge prefill 1 ms/token, KV decode 0.1 s flat,
    edge decode step 20 ms, cloud step 50 ms, cloud masked prefill 3 ms/token."""
    out: list[dict[str, object]] = []
    for length in (100, 200):
        for rep in range(2):
            e = {"length": length, "n": length, "repeat": rep}
            out.append({**e, "kind": "edge", "model": "E", "tokenize": 0.001, "prefill": 0.001 * length, "score": 0.01})
            for mode, enc in (("full", 0.002), ("int8", 0.004)):
                out.append(
                    {**e, "kind": "kv", "model": "E", "mode": mode, "encode": enc * length / 100, "decode": 0.1,
                     "generate": 0.02 * 4, "tokens": 5, "generator": "E"}
                )  # fmt: skip
            out.append(
                {**e, "kind": "local", "model": "E", "decode": 0.05, "generate": 0.0, "tokens": 1, "generator": "E"}
            )
            out.append(
                {**e, "kind": "scout", "model": "C", "encode": 0.0001, "decode": 0.003 * length, "generate": 0.05 * 2,
                 "tokens": 3, "generator": "C"}
            )  # fmt: skip
    return out


def test_stage_times_are_assembled_per_mode_and_model() -> None:
    out, fits = build_stage_times(records(), "E", "C", max_new_tokens=16, source="constructed")
    assert set(out) == {"E__C.json", "E.json"}
    pair = out["E__C.json"]
    assert pair.model_pair == "E->C" and set(pair.modes) == {"full", "int8", "local", "scout"}
    full, scout = pair.for_mode("full"), pair.for_mode("scout")
    assert full.prefill.per_token_s == pytest.approx(0.001) and full.prefill.fixed_s == pytest.approx(0.001)
    assert full.decode.at(500) == pytest.approx(0.1)
    assert full.generate.at(500) == pytest.approx(15 * 0.02)  # (16 - 1) steps of the EDGE model
    assert pair.for_mode("int8").encode.per_token_s == pytest.approx(0.00004)
    assert scout.decode.per_token_s == pytest.approx(0.003)  # the CLOUD's masked re-prefill
    assert scout.generate.at(500) == pytest.approx(15 * 0.05)  # steps of the cloud model
    assert scout.prefill == full.prefill and scout.score == full.score  # the edge still prefills and scores
    assert pair.for_mode("local").score == StageCost()
    assert set(out["E.json"].modes) == {"full", "int8"} and out["E.json"].model_pair == "E->E"
    assert fits["E: decode step"]["max_rel_residual"] < 1e-9


# ----------------------------------------------------------------------------------------------------------------
# the suite on constructed inputs
# ----------------------------------------------------------------------------------------------------------------
def pt(pair: str, mode: str, q: float, per_token: float, *, retention: float = 1.0, **kw: object) -> OperatingPoint:
    return OperatingPoint(
        mode=mode, retention=retention, bytes_per_context_token=per_token, quality_mean=q, quality_lo=q,
        quality_hi=q, n=40, model_pair=pair, source=f"constructed:{mode}", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def small_pair() -> tuple[OperatingPointTable, str, StageTimes]:
    pair = "s->c"
    table = OperatingPointTable(
        reference={pair: 1.0},
        points=[
            pt(pair, "full", 0.8, 12_000),
            pt(pair, "int8", 0.8, 6_500),
            pt(pair, "int4", 0.7, 3_500),
            pt(pair, "scout", 0.9, 0.125, retention=0.5, size_basis="context", fixed_bytes=33),
            pt(pair, "local", 0.8, 0.0),
        ],
    )
    kv = ModeStages(prefill=StageCost(fixed_s=0.2), decode=StageCost(fixed_s=0.1))
    st = StageTimes(
        model_pair=pair,
        modes={
            "full": kv,
            "int8": kv,
            "int4": kv,
            "scout": ModeStages(prefill=StageCost(fixed_s=0.2), decode=StageCost(fixed_s=2.5)),
            "local": kv,
        },
    )
    return table, pair, st


def large_pair() -> tuple[OperatingPointTable, str, StageTimes]:
    pair = "l->l"
    table = OperatingPointTable(
        reference={pair: 1.0},
        points=[pt(pair, "full", 1.0, 28_000), pt(pair, "int8", 0.99, 15_000), pt(pair, "int4", 0.97, 8_500)],
    )
    kv = ModeStages(prefill=StageCost(fixed_s=0.4), decode=StageCost(fixed_s=0.1))
    return table, pair, StageTimes(model_pair=pair, modes={"full": kv, "int8": kv, "int4": kv})


def test_restrict_table_and_default_policies() -> None:
    table, pair, st = small_pair()
    planning, notes = restrict_table(table, pair, st, ["local", "text"])
    assert {p.name for p in planning.points} == {"full", "int8", "int4", "scout@0.5"}
    assert notes == ["local: excluded from planning (mode local)"]
    no_int4 = StageTimes(model_pair=pair, modes={k: v for k, v in st.modes.items() if k != "int4"})
    _, notes2 = restrict_table(table, pair, no_int4, [])
    assert notes2 == [f"int4: no stage times for mode int4 in {pair}"]
    assert default_policies(planning, pair) == [
        "static:full", "static:int8", "static:int4", "static:scout@0.5", "adaptive:last", "adaptive:ewma",
        "adaptive:harmonic", "adaptive:quantile", "robust", "oracle",
    ]  # fmt: skip
    assert deadline_list(st, "full", 512, [0.5, 2.0]) == pytest.approx([0.8, 2.3])


def test_cell_model_aware_meets_more_and_the_trace_cell_matches_on_a_constant_link() -> None:
    tables = [large_pair(), small_pair()]
    devices = []
    for i, (table, pair, st) in enumerate([tables[0], tables[0], tables[1], tables[1]]):
        planning, _ = restrict_table(table, pair, st, ["local"])
        deadline = deadline_list(st, "full", 1000, [1.0])[0]
        devices.append(CellDevice(f"d{i}", pair, planning, st, 1000, deadline))
    static = run_cell_static(devices, 50e6)
    # 12.5 Mbit/s each: a large device needs 8.5 MB / 1 s = 68 Mbit/s even at INT4; small ones make INT4 (28).
    assert static["equal"].met <= static["model-aware"].met
    best = allocate_brute_force([d.demand() for d in devices], 50e6)
    assert static["model-aware"].met == best[0]
    link = StepProcess([0.0], [50e6], 10.0, loop=True)
    cell = run_cell_trace(devices, link, rounds=3, interval_s=5.0, bootstrap=100)
    for name, alloc in static.items():
        assert cell[name]["requests"] == 12
        assert cell[name]["met_pct"] == pytest.approx(100 * alloc.met / 4)  # a constant link: plans come true


SYNTHETIC = Path(__file__).resolve().parents[1] / "fixtures" / "traces" / "synthetic_lte_ul_walking.csv"
"""A synthetic 0.1 s uplink trace (tests/fixtures/traces): the suite's input here, never a measurement."""


@pytest.fixture
def trace_root(tmp_path: Path, no_data_dir: Path) -> Path:
    """A data directory holding the synthetic trace; HOME empty and SCOUT_DATA unset (the packaged traces only)."""
    root = tmp_path / "data-root"
    (root / "traces").mkdir(parents=True)
    (root / "traces" / SYNTHETIC.name).write_bytes(SYNTHETIC.read_bytes())
    return root


def test_default_traces_are_the_imported_uplink_ones_else_the_packaged(trace_root: Path) -> None:
    packaged = resolve_default_traces()
    lumos = ["lumos5g_vzw_mmwave5g_dl_driving_trace103", "lumos5g_vzw_mmwave5g_dl_walking_trace100"]
    assert packaged.traces == ["markov", *lumos] and packaged.cell_trace == lumos[0]
    assert "scout data import PATH" in packaged.note and "(downlink)" in packaged.note
    for name in [*DEFAULT_TRACES[1:3], DEFAULT_CELL_TRACE]:  # two of the six measured ones, and the cell's
        (trace_root / "traces" / f"{name}.csv").write_bytes(SYNTHETIC.read_bytes())
    some = resolve_default_traces(trace_root)
    assert some.traces == DEFAULT_TRACES[:3] and some.cell_trace == DEFAULT_CELL_TRACE
    assert some.note.startswith("not in the data directory") and DEFAULT_TRACES[-1] in some.note
    for name in DEFAULT_TRACES[3:]:
        (trace_root / "traces" / f"{name}.csv").write_bytes(SYNTHETIC.read_bytes())
    full = resolve_default_traces(trace_root)
    assert (full.traces, full.cell_trace, full.note) == (DEFAULT_TRACES, DEFAULT_CELL_TRACE, "")


def test_suite_writes_every_output_and_consistent_verdicts(tmp_path: Path, trace_root: Path) -> None:
    cfg = SuiteConfig(
        traces=["markov", SYNTHETIC.stem],
        context_tokens=1000,
        slacks_s=[0.5, 1.0, 2.0],
        requests=25,
        bootstrap=100,
        cell_rounds=5,
        cell_trace=SYNTHETIC.stem,
    )
    with using_data_dir(trace_root):
        summary = run_suite([small_pair(), large_pair()], cfg, tmp_path / "measured")
    for name in cfg.traces:
        for ext in ("json", "md", "png"):
            assert (tmp_path / "measured" / "traces" / f"{name}.{ext}").stat().st_size > 0
    for f in ("summary.json", "summary.md", "summary.png"):
        assert (tmp_path / "measured" / f).stat().st_size > 0
    assert json.loads((tmp_path / "measured" / "summary.json").read_text())["pair"] == "s->c"
    assert summary["planning_table_notes"] == ["local: excluded from planning (mode local)"]
    for data in summary["traces"].values():
        rows = {r["policy"]: r for r in data["summaries"]}
        assert set(rows["static:int8"]["mode_counts"]) == {"int8"}
        assert "local" not in "".join(r["policy"] for r in data["summaries"])
        for v in data["verdicts"]:
            a, b = rows[v["adaptive"]], rows[v["static"]]
            assert v["met_diff_pp"] == pytest.approx(a["met_pct"] - b["met_pct"])
            assert v["meets_at_least_as_many"] == (a["met_pct"] >= b["met_pct"])
            assert v["answered_quality_diff"] == pytest.approx(a["answered_quality"] - b["answered_quality"])
            assert v["quality_noise"] == 0.0  # constructed points have no CI width
        assert rows["oracle"]["gap_met_pp"] == 0.0
        assert {v["adaptive"] for v in data["verdicts"]} == {
            f"adaptive:{e}" for e in ("last", "ewma", "harmonic", "quantile")
        }
    cell = summary["cell"]
    assert [d["pair"] for d in cell["devices"]] == ["l->l", "l->l", "s->c", "s->c"]  # larger KV first
    assert set(cell["trace"]["allocators"]) == {"equal", "proportional", "model-aware"}
    readme = write_readme(tmp_path, {"measured": summary}, command="scout simulate-suite …", files=["t"], notes=[])
    text = readme.read_text()
    assert "scout simulate-suite …" in text and "Multi-device allocation: algorithm and cost" in text
    assert all(line.startswith(("- **", "  - ")) for line in digest(summary))
    heads = headline(summary)
    assert len(heads) == 2 and "(8 comparisons: 2 sources x 4 estimators)" in heads[0]
    assert "points measured higher: `full` (80.0 %)" in heads[1]  # int4 at 70 % is below full and int8


def test_stage_bench_resumes_only_with_the_same_settings(tmp_path: Path) -> None:
    from scout_cli.benchmarks.stages import StagesBenchConfig, _load_records

    cfg = StagesBenchConfig(edge_model="E", cloud_model="C", lengths=[128, 256], out=tmp_path)
    path = tmp_path / "E__C.records.jsonl"
    assert _load_records(path, cfg) == [] and path.is_file()
    with open(path, "a") as f:
        f.write(json.dumps({"unit": "scout", "length": 128, "repeat": 0}) + "\n")
    more_repeats = cfg.model_copy(update={"repeats": 5})  # more repeats extend the same measurements
    assert _load_records(path, more_repeats) == [{"unit": "scout", "length": 128, "repeat": 0}]
    other = cfg.model_copy(update={"lengths": [512, 1024]})  # other settings start afresh
    assert _load_records(path, other) == []
    assert _load_records(path, cfg) == []  # the file was restarted for `other`


def test_cli_builds_tables_from_eval_runs_and_writes_the_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trace_root: Path
) -> None:
    from typer.testing import CliRunner

    import scout_eval.op_tables as eop
    from scout.policy.operating_points import KVGeometry
    from scout_cli.main import app

    root = tmp_path / "eval"
    for experiment, model, conds in (
        ("quantization", "e-model", {"bf16": [0.5, 0.7], "int8": [0.5, 0.7], "int4": [0.4, 0.6]}),
        ("quantization", "c-model", {"bf16": [0.8, 0.9]}),
    ):
        run = root / experiment / f"squad_v2__{model}"
        run.mkdir(parents=True)
        cfg = {"experiment": experiment, "dataset": "squad_v2", "model": model, "cloud_model": None, "n": 2}
        info = {
            "experiment": experiment,
            "config": cfg,
            "metric": "f1",
            "reference": "bf16",
            "command": "",
            "models": {},
        }
        (run / "run.json").write_text(json.dumps(info))
        rows = [{"id": f"s{i}", "conditions": {c: {"f1": v[i]} for c, v in conds.items()}} for i in range(2)]
        (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(eop, "geometry_of_model", lambda name: KVGeometry(num_layers=2, kv_heads=1, head_dim=32))
    monkeypatch.setattr(eop, "MIN_EXAMPLES", 2)
    kv = ModeStages(prefill=StageCost(fixed_s=0.1), decode=StageCost(fixed_s=0.1))
    stages_dir = tmp_path / "stages"
    StageTimes(model_pair="e-model->c-model", modes={"full": kv, "int8": kv, "int4": kv, "local": kv}).save(
        stages_dir / "e-model__c-model.json"
    )
    out = tmp_path / "sim"
    args = [
        "simulate-suite", "--eval-root", str(root), "--pair", "e-model:c-model", "--pair", "x-model:c-model",
        "--stages-dir", str(stages_dir), "--traces", SYNTHETIC.stem, "--requests", "10",
        "--context-tokens", "256", "--cell-trace", SYNTHETIC.stem, "--measured-only",
        "--out", str(out), "--data-dir", str(trace_root),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    readme = (out / "README.md").read_text()
    assert "--pair e-model:c-model" in readme and "x-model->c-model: not simulated" in readme
    assert (out / "inputs" / "e-model__c-model.json").is_file()
    assert (out / "inputs" / "stages__e-model__c-model.json").is_file()
    summary = json.loads((out / "measured" / "summary.json").read_text())
    assert summary["pair"] == "e-model->c-model"
    assert [p["name"] for p in summary["points"]] == ["full", "int8", "int4"]  # local left out of planning
    nothing = CliRunner().invoke(app, ["simulate-suite", "--out", str(tmp_path / "none")])
    assert nothing.exit_code == 2 and "--eval-root" in nothing.output


def test_the_stage_bench_command_reproduces_its_settings() -> None:
    """The command written into every stage file parses back to the same settings, codecs included (their
    default follows the eval runs, so a command without them would measure, or refuse to resume, something else)."""
    import shlex

    import typer

    from scout_cli.benchmarks.stages import StagesBenchConfig, bench_command
    from scout_cli.main import app

    cfg = StagesBenchConfig(
        edge_model="e", cloud_model="c", lengths=[128, 512], repeats=2, codecs=["bf16", "mixed:p/{model}.json"]
    )
    words = shlex.split(bench_command(cfg.model_dump(mode="json")))
    assert words[:3] == ["scout", "bench", "stages"]
    cmd = typer.main.get_command(app).commands["bench"].commands["stages"]  # type: ignore[attr-defined]
    params = cmd.make_context("stages", words[3:]).params
    assert params["codecs"] == "bf16,mixed:p/{model}.json" and params["lengths"] == "128,512"
    assert (params["edge_model"], params["cloud_model"], params["repeats"], params["dtype"]) == ("e", "c", 2, "fp32")
