"""The README's set-up lines are what CI runs: `.ci/run` must contain the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setup_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set up.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no '## Set up' bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_two_setup_lines_demo_then_tests() -> None:
    lines = _setup_lines()
    assert len(lines) == 2
    assert lines[0].rstrip().endswith("scout demo")
    assert "pytest" in lines[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert _setup_lines()[1] in ci.splitlines()
