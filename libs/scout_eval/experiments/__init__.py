"""Experiment definitions (one module each); importing the package registers them with the runner."""

from scout_eval.experiments import combined, quantization, scout_mode, selection  # noqa: F401
