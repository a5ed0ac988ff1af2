"""`scout bench selection` end to end on a short context: every method measured, files written, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scout_cli.benchmarks.selection import (
    VARIANTS,
    SelectionBenchConfig,
    eager_bytes,
    long_context,
    run_selection_bench,
)

pytestmark = pytest.mark.models


def test_long_context_has_the_requested_token_count(smol) -> None:
    for n in (64, 300):
        text, question = long_context(smol.tokenizer, n)
        got = len(smol.tokenizer(" " + text, add_special_tokens=False)["input_ids"])
        assert abs(got - n) <= 1 and question


def test_bench_writes_reports_and_resumes(tmp_path: Path, smol) -> None:
    cfg = SelectionBenchConfig(models=["smollm2-135m"], lengths=[64], repeats=1, out=tmp_path, memory_budget_gib=8)
    result = run_selection_bench(cfg, progress=lambda _: None)
    methods = {r["method"] for r in result["rows"]}
    assert methods == {label for label, _, _ in VARIANTS} | {"prefill only (sdpa)"}
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in result["rows"])
    for name in ("README.md", "results.json", "selection_bench.png", "results.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    again = run_selection_bench(cfg, progress=lambda _: None)  # resumes: nothing is measured twice
    assert (tmp_path / "results.jsonl").read_text().splitlines() == lines
    assert len(again["rows"]) == len(lines)
    assert json.loads((tmp_path / "results.json").read_text())["rows"]


def test_eager_over_budget_is_reported_not_run(tmp_path: Path, smol) -> None:
    need = eager_bytes(smol.spec, 100, 2)
    cfg = SelectionBenchConfig(
        models=["smollm2-135m"], lengths=[64], repeats=1, out=tmp_path, memory_budget_gib=need / 2**30 / 1000
    )
    rows = run_selection_bench(cfg, progress=lambda _: None)["rows"]
    eager = next(r for r in rows if r["method"] == "q2c (eager)")
    assert eager["status"].startswith("over budget") and "seconds" not in eager
