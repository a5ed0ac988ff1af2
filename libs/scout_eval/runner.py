"""The experiment runner: resumable, one line of results per sample, everything needed to regenerate a report.

A run is (experiment, dataset, model[, cloud model], n, seed). Its folder holds `run.json` (the exact command,
configuration, model fingerprints and GGUF hashes, where the data came from with the dataset file's SHA-256, the
sample ids, dates) and `samples.jsonl`, one JSON object per
finished sample with every condition's prediction and scores. An interrupted run continues where it stopped: the
samples already in `samples.jsonl` are skipped. Experiments compute everything a sample needs from one prefill
per model where they can (scores and caches are shared by every method and retention level).

The run folder's format lives in `scout_eval.run_folder` (what reports read); the experiment interface and its
registry in `scout_eval.experiments.base` (what experiments implement). This module sits above both: it imports
the experiments package, which registers every experiment.

Data (`scout_eval.sources`): ``source="file"`` reads the data directory's copy and falls back to the sample
packaged with Scout; a run that fell back is renamed ``sample`` (its folder ends in ``__sample``), so results on
the small sample never mix with results on the full set in one folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scout.dataroot import DataSource
from scout.datasets import Example
from scout.metrics import PRIMARY_METRIC
from scout_eval.experiments import get_experiment
from scout_eval.run_folder import RESULTS_FILE, RUN_FILE, read_samples
from scout_eval.sources import describe_source, load_from_source, provenance


@dataclass
class RunConfig:
    """What identifies a run; `options` holds experiment-specific settings (retentions, methods, codecs …)."""

    experiment: str
    dataset: str
    model: str
    n: int
    cloud_model: str | None = None
    seed: int = 0
    out_root: Path = Path("reports/eval")
    max_new_tokens: int = 16
    max_context_chars: int | None = 3000
    answerable_only: bool = True
    dtype: str = "bf16"
    device: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "file"
    """``file`` (the data directory, else the packaged sample), ``sample`` (the packaged sample) or ``hub`` (the
    full set from the Hugging Face hub); see `scout_eval.sources`."""

    @property
    def run_name(self) -> str:
        """``dataset__model[__cloud]``, plus ``__<dtype>`` off bf16 and ``__<application>`` off the study's mask:
        runs that measure different things never share a folder."""
        parts = [self.dataset, self.model] + ([self.cloud_model] if self.cloud_model else [])
        if self.dtype != "bf16":
            parts.append(self.dtype)
        application = self.options.get("application")
        if application and application != "mask":
            parts.append(str(application))
        if self.source != "file":
            parts.append(self.source)
        return "__".join(parts)

    def identity(self) -> dict[str, Any]:
        """The settings that decide what a sample's results mean (not where they are written or on what device)."""
        d = self.to_json()
        for k in ("out_root", "device", "n"):  # n: seeded samples of a larger n extend those of a smaller one
            d.pop(k, None)
        if d.get("source") == "file":  # the default; runs from before the option existed read the same files
            d.pop("source")
        return d

    @property
    def run_dir(self) -> Path:
        return self.out_root / self.experiment / self.run_name

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_root"] = str(self.out_root)
        return d


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=5)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def load_run_examples(cfg: RunConfig) -> tuple[list[Example], DataSource]:
    """The run's examples and where they came from (`scout_eval.sources.load_from_source`)."""
    return load_from_source(
        cfg.source,
        cfg.dataset,
        n=cfg.n,
        seed=cfg.seed,
        answerable_only=cfg.answerable_only and cfg.dataset == "squad_v2",
        max_context_chars=cfg.max_context_chars,
    )


def select_examples(cfg: RunConfig) -> list[Example]:
    """The run's examples (see `load_run_examples`)."""
    return load_run_examples(cfg)[0]


def _check_resumable(previous: dict[str, Any], cfg: RunConfig) -> None:
    """Refuse to append to a run made with other settings: its samples would silently mix two experiments."""
    old = previous.get("config")
    if not old:
        return
    old = {k: v for k, v in old.items() if k not in ("out_root", "device", "n")}
    if old.get("source") == "file":
        old.pop("source")
    new = cfg.identity()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ValueError(f"{cfg.run_dir} was run with other settings ({shown}); use another --out or the same flags")


def run_experiment(
    cfg: RunConfig,
    *,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    command: list[str] | None = None,
    notify: Callable[[str], None] | None = None,
) -> Path:
    """Run (or continue) an experiment; returns its folder. `limit` stops after that many new samples; `notify`
    receives the line saying where the data came from (`scout_eval.sources.describe_source`)."""
    examples, data = load_run_examples(cfg)
    if cfg.source == "file" and data.is_packaged:
        cfg = replace(cfg, source="sample")  # the sample's results get a folder of their own (``__sample``)
    data_record = provenance(data)
    if notify is not None:
        notify(describe_source(cfg.dataset, data_record))
    exp = get_experiment(cfg.experiment)(cfg)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    done = {r["id"] for r in read_samples(run_dir)}
    todo = [ex for ex in examples if ex.id not in done]
    if limit is not None:
        todo = todo[:limit]
    identity = exp.setup() if todo else {}
    run_path = run_dir / RUN_FILE
    previous = json.loads(run_path.read_text()) if run_path.exists() else {}
    _check_resumable(previous, cfg)
    info = {
        "experiment": cfg.experiment,
        "config": cfg.to_json(),
        "command": " ".join(command or sys.argv),
        "metric": PRIMARY_METRIC.get(cfg.dataset, "f1"),
        "reference": exp.reference,
        "data": data_record,
        "models": identity or previous.get("models", {}),
        "sample_ids": [ex.id for ex in examples],
        "started": previous.get("started", datetime.now(UTC).isoformat(timespec="seconds")),
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }
    run_path.write_text(json.dumps(info, indent=2))
    with open(run_dir / RESULTS_FILE, "a", encoding="utf-8") as out:
        for i, ex in enumerate(todo):
            t0 = time.perf_counter()
            conditions = exp.run_sample(ex)
            meta = conditions.pop("_meta", {})
            row = {"id": ex.id, "seconds": round(time.perf_counter() - t0, 3), "meta": meta, "conditions": conditions}
            out.write(json.dumps(row) + "\n")
            out.flush()
            if progress is not None:
                progress(i + 1, len(todo))
    return run_dir
