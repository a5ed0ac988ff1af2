"""The experiment interface and its registry: what each module in this package implements and registers into.

It sits below both the experiments and the runner: an experiment imports this module (never the runner), and the
runner imports the package (`scout_eval.experiments`), whose `__init__` imports every experiment and so fills
`EXPERIMENTS`. The settings an experiment reads are named by a protocol (`ExperimentSettings`) for the same
reason: the runner's `RunConfig` satisfies it without this module importing the runner.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from scout.datasets import Example


class ExperimentSettings(Protocol):
    """What an experiment reads of its run's configuration (`scout_eval.runner.RunConfig` is one)."""

    dataset: str
    model: str
    cloud_model: str | None
    max_new_tokens: int
    dtype: str
    device: str | None
    options: dict[str, Any]

    @property
    def run_name(self) -> str: ...


class Experiment(ABC):
    """One experiment: which conditions it measures and how one sample is run."""

    name: ClassVar[str]
    #: the condition every other one is compared with in reports (e.g. "full")
    reference: ClassVar[str]

    def __init__(self, cfg: ExperimentSettings) -> None:
        self.cfg = cfg

    @abstractmethod
    def setup(self) -> dict[str, Any]:
        """Load models; return identity facts for run.json (fingerprints, hashes)."""

    @abstractmethod
    def run_sample(self, ex: Example) -> dict[str, dict[str, Any]]:
        """condition name -> {"pred": …, metric: value, …} for one example (plus optional "_meta")."""


EXPERIMENTS: dict[str, type[Experiment]] = {}


def register(cls: type[Experiment]) -> type[Experiment]:
    """Class decorator: make an experiment runnable by its `name` (`scout eval run --experiment NAME`)."""
    EXPERIMENTS[cls.name] = cls
    return cls


def model_identity(name: str) -> dict[str, Any]:
    """Fingerprint, upstream source and (for offline aliases) the verified GGUF SHA-256 of a model."""
    from scout.models import SPEC_FILE, load_spec, prepared_dir

    spec = load_spec(name)
    ident: dict[str, Any] = {"name": name, "fingerprint": spec.fingerprint, "source": spec.source}
    meta = prepared_dir(name) / SPEC_FILE
    if meta.is_file():
        ident["gguf_sha256"] = json.loads(meta.read_text()).get("gguf_sha256")
    return ident
