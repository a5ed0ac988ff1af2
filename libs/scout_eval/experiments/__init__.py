"""Experiment definitions (one module each); importing the package registers every one of them (`EXPERIMENTS`).

The look-up lives here, after the imports that fill the registry, so that the runner finds every experiment by
importing this package, and the experiments themselves import only `scout_eval.experiments.base`.
"""

from scout_eval.experiments import combined, quantization, scout_mode, selection  # noqa: F401  (registration)
from scout_eval.experiments.base import EXPERIMENTS, Experiment

__all__ = ["EXPERIMENTS", "Experiment", "get_experiment"]


def get_experiment(name: str) -> type[Experiment]:
    """The experiment class registered as `name`."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]
