"""`scout serve`, `scout ask` against the running stack, and the pipeline bench's arithmetic and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stack import ServiceStack
from typer.testing import CliRunner

from scout.datasets import Example
from scout_cli.benchmarks.pipeline import percentiles, render_markdown, split
from scout_cli.main import app

runner = CliRunner()


def test_serve_refuses_an_unknown_role() -> None:
    result = runner.invoke(app, ["serve", "janitor"])
    assert result.exit_code == 2 and "unknown role" in result.output


@pytest.mark.models
@pytest.mark.parametrize("transport", ["nats", "http"])
def test_ask_prints_answer_mode_bytes_and_breakdown(
    stack: ServiceStack, squad: list[Example], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    monkeypatch.setenv("SCOUT_NATS_URL", stack.nats_url)
    monkeypatch.setenv("SCOUT_NAMESPACE", stack.namespace)
    doc = tmp_path / "doc.txt"
    doc.write_text(squad[0].context, encoding="utf-8")
    args = [
        "ask",
        squad[0].question,
        "--document",
        str(doc),
        "--mode",
        "int8",
        "--retention",
        "0.5",
        "--deadline-ms",
        "30000",
        "--max-new-tokens",
        "4",
    ]
    if transport == "http":
        args += ["--http", f"http://127.0.0.1:{stack.selector.ports['http']}"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    fields = json.loads(result.output)
    assert (fields["mode"], fields["retention"]) == ("int8", 0.5) and fields["bytes_sent"] > 10_000
    assert {"prefill", "encode", "upload", "decode", "generate", "total"} <= set(fields["timings"])
    human = runner.invoke(app, args)
    assert human.exit_code == 0, human.output
    assert "mode int8@0.5" in human.output and "bytes sent" in human.output and "latency breakdown" in human.output
    bad = runner.invoke(app, ["ask", "q", "--document", str(doc), "--mode", "telepathy"])
    assert bad.exit_code == 2


def test_bench_arithmetic_and_report() -> None:
    compute, overhead = split(1.0, {"prefill": 0.4, "generate": 0.3, "plan": 0.1, "upload": 0.05})
    assert compute == pytest.approx(0.7) and overhead == pytest.approx(0.3)
    assert split(0.5, {"prefill": 0.6}) == (0.6, 0.0)
    p = percentiles([float(i) for i in range(101)])
    assert (p["p50"], p["p99"], p["n"]) == (50.0, 99.0, 101)
    stats = {"p50": 1.0, "p99": 2.0, "n": 3}
    path = {"bytes_sent": 10, "total_s": stats, "compute_s": stats, "overhead_s": stats, "answers": ["a"]}
    services = {
        **path,
        "overhead_stages_p50_s": dict.fromkeys(
            ("plan", "stage", "raw_fetch", "upload", "enqueue", "fetch", "queue"), 0.001
        ),
    }
    result = {
        "config": {"model": "m", "dtype": "fp32", "max_new_tokens": 8},
        "machine": {"cpu_count": 2, "load_average": [1.0, 1.0, 1.0]},
        "summary": {
            "cases": {"small": {"in_process": path, "services": services, "same_answer": True}},
            "throughput": {
                "1": {"requests": 4, "seconds": 4.0, "requests_per_s": 1.0, "by_decoder": {"d1": 4}},
                "2": {"requests": 4, "seconds": 2.0, "requests_per_s": 2.0, "by_decoder": {"d1": 2, "d2": 2}},
            },
        },
    }
    text = render_markdown(result)
    assert "2.00x the throughput of one" in text and "Same answers on both paths: yes" in text
    assert "| small | services | 10 | 3 | 1,000.000 | 2,000.000 |" in text
