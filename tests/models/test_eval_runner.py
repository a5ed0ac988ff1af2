"""The evaluation runner and report on the real SmolLM2: every experiment runs, resumes, and reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scout_eval.report import write_reports
from scout_eval.run_folder import RUN_FILE, read_samples
from scout_eval.runner import RunConfig, run_experiment
from scout_eval.summary import summarise_run

pytestmark = pytest.mark.models


def _cfg(tmp_path: Path, experiment: str, **kw) -> RunConfig:
    base = {
        "dataset": "squad_v2",
        "model": "smollm2-135m",
        "n": 2,
        "out_root": tmp_path,
        "max_new_tokens": 6,
        "max_context_chars": 700,
    }
    base.update(kw)
    return RunConfig(experiment=experiment, **base)


def test_selection_run_resumes_and_reports(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "selection", options={"methods": ["q2c", "random"], "retentions": [0.5]})
    run_dir = run_experiment(cfg, limit=1)
    assert len(read_samples(run_dir)) == 1
    run_experiment(cfg)  # continues with the second sample only
    rows = read_samples(run_dir)
    assert [r["id"] for r in rows] == json.loads((run_dir / "run.json").read_text())["sample_ids"]
    run_experiment(cfg)  # nothing left to do: no new lines
    assert len(read_samples(run_dir)) == 2
    assert set(rows[0]["conditions"]) == {"full", "q2c@0.5", "random@0.5"}
    s = summarise_run(run_dir)
    full = np.mean([r["conditions"]["full"]["f1"] for r in rows])
    assert s["conditions"]["full"]["f1"]["mean"] == pytest.approx(full)
    assert "vs_reference" in s["conditions"]["q2c@0.5"]
    write_reports(tmp_path)
    for name in ("report.md", "summary.json", "plot.png"):
        assert (run_dir / name).stat().st_size > 0
    assert "q2c" in (tmp_path / "README.md").read_text() or "selection" in (tmp_path / "README.md").read_text()


def test_quantization_and_combined_runs(tmp_path: Path) -> None:
    q = run_experiment(_cfg(tmp_path, "quantization", n=1, options={"codecs": ["bf16", "int8", "int2"]}))
    row = read_samples(q)[0]["conditions"]
    assert row["int8"]["bytes"] < row["bf16"]["bytes"] and row["int2"]["bytes"] < row["int8"]["bytes"]
    c = run_experiment(_cfg(tmp_path, "combined", n=1, options={"codecs": ["bf16", "int4"], "retentions": [0.5, 1.0]}))
    row = read_samples(c)[0]["conditions"]
    assert row["int4@0.5"]["bytes"] < row["int4@1"]["bytes"] < row["bf16@1"]["bytes"]


def test_mmlu_quantization_scores_choice_logits(tmp_path: Path) -> None:
    q = run_experiment(_cfg(tmp_path, "quantization", dataset="mmlu", n=2, options={"codecs": ["bf16", "int8"]}))
    for row in read_samples(q):
        for cond in row["conditions"].values():
            assert cond["pred"] in "ABCD" and cond["acc"] in (0.0, 1.0)


def test_scout_run_same_tokenizer(tmp_path: Path) -> None:
    run_dir = run_experiment(_cfg(tmp_path, "scout", n=1, cloud_model="smollm2-135m", options={"retentions": [0.5]}))
    row = read_samples(run_dir)[0]["conditions"]
    # the same model on both ends selects the same positions: overlap 1, and scout == own
    assert row["scout@0.5"]["overlap"] == 1.0
    assert row["scout@0.5"]["pred"] == row["own@0.5"]["pred"]
    s = summarise_run(run_dir)
    assert "0.5" in s["scout_vs_own"]


@pytest.mark.qwen
def test_scout_run_across_tokenizers(tmp_path: Path) -> None:
    from scout.models import installed

    if not installed("qwen2.5-coder-0.5b"):
        pytest.skip("qwen2.5-coder-0.5b not installed")
    cfg = _cfg(tmp_path, "scout", n=1, cloud_model="qwen2.5-coder-0.5b", options={"retentions": [0.5]})
    run_dir = run_experiment(cfg)  # not always cfg.run_dir: a run on the packaged sample is renamed `__sample`
    row = read_samples(run_dir)[0]["conditions"]
    assert 0.0 < row["scout@0.5"]["overlap"] <= 1.0
    assert json.loads((run_dir / RUN_FILE).read_text())["models"]["same_tokenizer"] is False
