"""`scout serve`, `scout ask` against the running stack, the pipeline bench's arithmetic and report, and what the
harness commands say when the harness is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from stack import ServiceStack
from typer.testing import CliRunner

from scout.datasets import Example
from scout_cli.main import app
from scout_testbed.bench import percentiles, split
from scout_testbed.bench_report import render_markdown

runner = CliRunner()


def test_serve_refuses_an_unknown_role() -> None:
    result = runner.invoke(app, ["serve", "janitor"])
    assert result.exit_code == 2 and "unknown role" in result.output


def test_every_role_name_resolves_to_its_services_main() -> None:
    from scout_cli.commands.serve import ROLES, role_main

    for name, role in ROLES.items():
        main = role_main(role)
        assert main.__module__ == f"scout_services.{role}.main", name
    with pytest.raises(ValueError):
        role_main("janitor")


@pytest.mark.parametrize(
    "argv",
    [["bench", "pipeline"], ["bench", "reliability"], ["bench", "soak"]],
)
def test_harness_commands_say_how_to_install_the_harness(argv: list[str]) -> None:
    """The image has no `scout_testbed`: the command must say so in one line, not print a traceback."""
    code = (
        "import sys\n"
        "sys.modules['scout_testbed'] = None  # as if the harness were not installed\n"
        "from scout_cli.main import main\n"
        f"sys.argv = ['scout', *{argv!r}]\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "needs the test harness: pip install -e ./libs/testbed" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_missing_module_inside_the_harness_is_not_mistaken_for_the_harness() -> None:
    import typer

    from scout_cli.benchmarks.common import needs_harness

    with pytest.raises(typer.Exit):
        needs_harness(ModuleNotFoundError("no scout_testbed", name="scout_testbed.bench"), "scout bench pipeline")
    other = ModuleNotFoundError("no redis", name="redis")
    with pytest.raises(ModuleNotFoundError) as info:
        needs_harness(other, "scout bench pipeline")
    assert info.value is other


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


def test_an_answer_with_brackets_prints_as_generated() -> None:
    from rich.console import Console

    from scout_cli.commands.serve import print_answer

    out = Console(record=True, width=200)
    fields = {"answer": "[/bold] x[0]", "mode": "text", "bytes_sent": 12, "timings": {"total": 0.5}, "reason": "[b]"}
    print_answer(out, fields)
    text = out.export_text()
    assert "answer [/bold] x[0]" in text and "plan: [b]" in text and "mode text" in text
