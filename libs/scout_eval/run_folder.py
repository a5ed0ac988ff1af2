"""What a run leaves on disk, and how to read it back: `run.json` and `samples.jsonl` in one folder per run.

Reports, claims and the operating-point tables only read run folders; they import this small module rather than
the runner, so regenerating a report never loads the experiments (nor torch).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS_FILE = "samples.jsonl"
RUN_FILE = "run.json"


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """The finished samples of a run, one dict per line of `samples.jsonl` (none if the run has not started)."""
    path = run_dir / RESULTS_FILE
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by an interruption: that sample is simply run again
    return rows


def iter_runs(root: Path) -> Iterator[Path]:
    """Every run folder under `root` (those with a run.json)."""
    yield from sorted(p.parent for p in root.glob(f"*/*/{RUN_FILE}"))
