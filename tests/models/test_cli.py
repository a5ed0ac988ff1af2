"""The `scout` command line: instant help, model listing, and the README's demo end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from scout_cli.main import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("demo", "ask", "models"):
        assert cmd in result.output


def test_help_does_not_import_torch() -> None:
    code = "import sys; from scout_cli.main import app; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_help_loads_neither_the_services_nor_the_harness() -> None:
    """The CLI imports the roles and the harness with ordinary imports inside its commands: registering the
    commands (what `scout --help` does) must not load them, nor NATS, Redis or OpenTelemetry."""
    heavy = ("scout_services", "scout_runtime", "scout_testbed", "nats", "redis", "opentelemetry", "aiohttp")
    code = (
        "import sys; from scout_cli.main import app\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))\n"
        "sys.exit(str(loaded) if loaded else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_models_list_json_reports_smollm2() -> None:
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["alias"]: r for r in json.loads(result.output)}
    assert set(rows) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert rows["smollm2-135m"]["installed"] is True


def test_prepare_unknown_alias_fails_with_one_line() -> None:
    result = runner.invoke(app, ["models", "prepare", "no-such-model"])
    assert result.exit_code == 2
    assert "unknown model alias" in result.output


@pytest.mark.models
def test_demo_runs_the_embedded_roles() -> None:
    """README line 1: `scout demo` with no servers: the four roles in-process, one table row per ask."""
    proc = subprocess.run(
        [sys.executable, "-m", "scout_cli.main", "demo", "--max-new-tokens", "8", "--rate", "400"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "four roles in-process, uplink paced at 400 Mbit/s" in out
    assert "policy chose" in out and "at 400 Mbit/s" in out
    rows = [line.split() for line in out.splitlines()]
    for ask in ("policy", "full", "int4", "scout"):
        assert any(r[:1] == [ask] for r in rows), ask
    assert any(r[:3] == ["edge", "only", "local"] for r in rows)
    assert "gold:" in out
