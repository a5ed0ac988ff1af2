"""The README's set-up lines are what CI runs: `.ci/run` reads them from README.md at run time (so they cannot drift)
and runs line 1, then line 2, verbatim in a fresh clone with nothing beside it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / ".ci" / "run"


def _setup_lines(text: str | None = None) -> list[str]:
    text = (ROOT / "README.md").read_text() if text is None else text
    block = re.search(r"## Set up.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no '## Set up' bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _ci(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CI), *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def test_readme_has_two_setup_lines_demo_then_tests() -> None:
    lines = _setup_lines()
    assert len(lines) == 2
    assert lines[0].rstrip().endswith("scout demo")
    assert "pytest" in lines[1]


def test_ci_reads_the_readme_setup_lines_verbatim() -> None:
    proc = _ci("setup-lines", str(ROOT / "README.md"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == _setup_lines()


def test_ci_reader_follows_a_changed_readme_and_rejects_one_without_the_block(tmp_path: Path) -> None:
    """The lines come from the file, not from a copy inside .ci/run: another README gives other lines."""
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n## Set up (anything)\n\nSome words.\n\n```bash\necho 'one' && true\n\n"
        "python3 -m venv v && v/bin/python -m pytest -k 'a b'\n```\n\n## Next\n\n```bash\nnot this\n```\n"
    )
    proc = _ci("setup-lines", str(readme))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == _setup_lines(readme.read_text())
    assert proc.stdout.splitlines() == ["echo 'one' && true", "python3 -m venv v && v/bin/python -m pytest -k 'a b'"]
    readme.write_text("# x\n\n## Install\n\n```bash\npip install scout\n```\n")
    assert _ci("setup-lines", str(readme)).returncode != 0


def test_ci_dry_run_runs_line_1_then_line_2_in_a_fresh_clone() -> None:
    """The dry run clones the committed tree into an empty folder and prints what it would run there, in order,
    with SCOUT_SHARED unset and a fresh HOME (nothing is installed or run)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: .ci/run clones the repository")
    committed = subprocess.run(
        ["git", "-C", str(ROOT), "show", "HEAD:README.md"], capture_output=True, text=True, check=False
    )
    if committed.returncode != 0:
        pytest.skip(f"no committed README.md: {committed.stderr.strip()}")
    env = {**os.environ, "SCOUT_CI_DRY_RUN": "1", "SCOUT_SHARED": str(ROOT.parent / "shared")}
    proc = _ci(env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    would_run = [line.split(": ", 1)[1] for line in out.splitlines() if line.lstrip().startswith("would run in ")]
    line1, line2 = _setup_lines(committed.stdout)
    assert would_run[:2] == [line1, line2]
    assert any("check-chart.sh" in c for c in would_run[2:]) and any("ruff format --check" in c for c in would_run)
    assert "nothing beside the clone (no shared folder): ok" in out
    assert "SCOUT_SHARED=(unset)" in out
    home = re.search(r"HOME=(\S+)", out)
    assert home and home.group(1) != os.environ.get("HOME") and not Path(home.group(1)).exists()  # fresh, cleaned up
