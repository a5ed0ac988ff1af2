"""The runner's bookkeeping without a model: run folders name what they measure, and a run refuses to be
continued with other settings (its samples would silently mix two experiments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scout.datasets import Example
from scout_eval.experiments.base import Experiment, register
from scout_eval.run_folder import read_samples
from scout_eval.runner import RunConfig, run_experiment


@register
class _Echo(Experiment):
    """Answers every sample with its first gold answer (F1 1.0): enough to drive the runner."""

    name = "unit-echo"
    reference = "gold"

    def setup(self) -> dict[str, Any]:
        return {"model": {"name": self.cfg.model}}

    def run_sample(self, ex: Example) -> dict[str, dict[str, Any]]:
        return {"gold": {"f1": 1.0, "em": 1.0}, "_meta": {"id": ex.id}}


def _cfg(tmp_path: Path, **changes: Any) -> RunConfig:
    base: dict[str, Any] = {
        "experiment": "unit-echo",
        "dataset": "squad_v2",
        "model": "m",
        "n": 3,
        "out_root": tmp_path,
        "max_context_chars": 600,
    }
    return RunConfig(**{**base, **changes})


def test_run_names_carry_dtype_and_application() -> None:
    assert RunConfig("selection", "squad_v2", "m", 1).run_name == "squad_v2__m"
    assert RunConfig("selection", "squad_v2", "m", 1, dtype="fp32").run_name == "squad_v2__m__fp32"
    cfg = RunConfig("selection", "squad_v2", "m", 1, dtype="fp32", options={"application": "evict"})
    assert cfg.run_name == "squad_v2__m__fp32__evict"
    assert RunConfig("scout", "squad_v2", "a", 1, cloud_model="b", options={"application": "mask"}).run_name == (
        "squad_v2__a__b"
    )


def test_resume_continues_and_a_larger_n_extends(tmp_path: Path) -> None:
    run_dir = run_experiment(_cfg(tmp_path), limit=2)
    assert len(read_samples(run_dir)) == 2
    run_experiment(_cfg(tmp_path))
    first = [r["id"] for r in read_samples(run_dir)]
    assert len(first) == 3
    run_experiment(_cfg(tmp_path, n=5))
    ids = [r["id"] for r in read_samples(run_dir)]
    assert ids[:3] == first and len(ids) == len(set(ids)) == 5


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    run_dir = run_experiment(_cfg(tmp_path, options={"codecs": ["bf16", "int8"]}), limit=1)
    with pytest.raises(ValueError, match=r"other settings.*codecs"):
        run_experiment(_cfg(tmp_path, options={"codecs": ["bf16", "int4"]}))
    with pytest.raises(ValueError, match="max_new_tokens"):
        run_experiment(_cfg(tmp_path, options={"codecs": ["bf16", "int8"]}, max_new_tokens=4))
    assert len(read_samples(run_dir)) == 1  # the refused runs appended nothing
