"""A discrete-time Markov chain of link rates: the synthetic bandwidth process of the source study, configurable.

Why keep a synthetic process next to the measured traces: it is the study's own setting (Paper B §3 simulated
a 6-state chain between 5 and 200 Mbit/s), so reproducing its comparison needs it; and a chain with known
transition probabilities has a known stationary distribution, which makes the simulator testable (long-run
state frequencies must converge to it).

The chain holds each state for ``step_s`` seconds, then moves to state ``j`` with probability
``transition[i][j]``. The path is generated on demand in fixed chunks from one seeded generator, one uniform
draw per step, so the path is a pure function of the configuration: it does not depend on which times were
queried first. `MarkovBandwidth` is a `StepProcess`, so the transfer-time integral is exact.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scout.channel.process import StepProcess

__all__ = ["MarkovBandwidth", "MarkovConfig", "stationary_distribution", "study_preset"]

_CHUNK_STEPS = 4096
_ROW_SUM_TOL = 1e-6


class MarkovConfig(BaseModel):
    """States (Mbit/s), row-stochastic transition matrix, step duration, seed and initial state.

    ``initial_state=None`` draws the first state from the stationary distribution, so the process is
    stationary from t = 0 and time averages need no burn-in. ``max_steps`` bounds how far the path is grown
    (rounded up to whole chunks of 4096 steps): a transfer that has not finished by then is reported as never
    finishing (``math.inf``), so a chain that can stall in a 0 Mbit/s state cannot loop forever.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    name: str = "markov"
    states_mbps: list[float] = Field(min_length=1)
    transition: list[list[float]]
    step_s: float = Field(gt=0)
    seed: int = 0
    initial_state: int | None = None
    max_steps: int = Field(default=10_000_000, gt=0)
    source: str = ""

    @model_validator(mode="after")
    def _check(self) -> MarkovConfig:
        n = len(self.states_mbps)
        if any(not math.isfinite(s) or s < 0 for s in self.states_mbps):
            raise ValueError("states_mbps must be finite and non-negative")
        if len(self.transition) != n or any(len(row) != n for row in self.transition):
            raise ValueError(f"transition must be {n} x {n} for {n} states")
        for i, row in enumerate(self.transition):
            if any(not math.isfinite(p) or p < 0 for p in row):
                raise ValueError(f"transition row {i} has a negative or non-finite probability")
            if abs(sum(row) - 1.0) > _ROW_SUM_TOL:
                raise ValueError(f"transition row {i} sums to {sum(row)}, not 1")
        if self.initial_state is not None and not 0 <= self.initial_state < n:
            raise ValueError(f"initial_state must be in [0, {n}), got {self.initial_state}")
        return self

    @property
    def matrix(self) -> np.ndarray:
        """The transition matrix, rows renormalised to sum to exactly 1."""
        p = np.asarray(self.transition, dtype=np.float64)
        return p / p.sum(axis=1, keepdims=True)

    def stationary(self) -> np.ndarray:
        """Stationary distribution of the chain (see `stationary_distribution`)."""
        return stationary_distribution(self.matrix)

    def mean_rate_mbps(self) -> float:
        """Long-run mean rate: the stationary-weighted mean of the states."""
        return float(self.stationary() @ np.asarray(self.states_mbps))


def stationary_distribution(p: np.ndarray) -> np.ndarray:
    """The row vector ``pi`` with ``pi P = pi`` and ``sum(pi) = 1``.

    Solved as the least-squares solution of the stacked system ``[P^T - I; 1^T] pi = [0; 1]``, which is exact
    (zero residual) when the chain has a unique stationary distribution (one closed class); for a reducible
    chain it returns one of the stationary distributions, so the configuration should be irreducible.
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.shape[0]
    a = np.vstack((p.T - np.eye(n), np.ones((1, n))))
    b = np.zeros(n + 1)
    b[-1] = 1.0
    pi, *_ = np.linalg.lstsq(a, b, rcond=None)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


class MarkovBandwidth(StepProcess):
    """The Markov chain as a `BandwidthProcess` (rates in bit/s), grown on demand in chunks of steps."""

    def __init__(self, config: MarkovConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._cum_rows = [list(np.cumsum(row)) for row in config.matrix]
        for row in self._cum_rows:
            row[-1] = math.inf  # a uniform draw can never fall past the last state through rounding
        self._rates_of_state = np.asarray(config.states_mbps, dtype=np.float64) * 1e6
        if config.initial_state is None:
            cum_pi = list(np.cumsum(config.stationary()))
            cum_pi[-1] = math.inf
            first = bisect.bisect_right(cum_pi, float(self._rng.random()))
        else:
            first = config.initial_state
        self._state = first
        self._states: list[int] = [first]
        states, end = self._draw(1)
        super().__init__(np.arange(1, dtype=np.float64), self._rates_of_state[[first]], config.step_s)
        self._states.extend(states)
        self._append(
            np.arange(1, end, dtype=np.float64) * config.step_s, self._rates_of_state[states], end * config.step_s
        )

    def _draw(self, already: int) -> tuple[list[int], int]:
        """Draw the next chunk of states so that the path holds a multiple of the chunk size afterwards."""
        k = _CHUNK_STEPS - already % _CHUNK_STEPS
        u = self._rng.random(k)
        out: list[int] = []
        s = self._state
        rows = self._cum_rows
        for x in u.tolist():
            s = bisect.bisect_right(rows[s], x)
            out.append(s)
        self._state = s
        return out, already + k

    def _grow(self) -> bool:
        n = len(self._states)
        if n >= self.config.max_steps:
            return False
        states, end = self._draw(n)
        step = self.config.step_s
        self._states.extend(states)
        self._append(np.arange(n, end, dtype=np.float64) * step, self._rates_of_state[states], end * step)
        return True

    def states_until(self, t: float) -> np.ndarray:
        """State indices of every step that starts before ``t`` (for frequency checks and plots)."""
        steps = math.ceil(self._check_t(t) / self.config.step_s)
        while len(self._states) < steps and self._grow():
            pass
        return np.asarray(self._states[:steps], dtype=np.int64)


def study_preset(*, step_s: float = 1.0, seed: int = 0, initial_state: int | None = None) -> MarkovConfig:
    """STUDY PRESET, for comparison with the source study only: its 6-state chain (5-200 Mbit/s).

    States and transition matrix as in the authors' simulation code (``taiwanfifi/AICoMM``,
    ``experiments/legacy-scripts/run_batch30_adaptive_protocol.py``, ``BandwidthSimulator``): the chain stays
    in its state or moves mostly to neighbours. The study advanced the chain once per request and gave no
    step duration; ``step_s`` (default 1 s) is Scout's choice. The study started in the 25 Mbit/s state with
    ``np.random.RandomState(42)``; here the initial state is drawn from the stationary distribution unless
    given, and the generator is numpy's ``default_rng(seed)``, so paths are not the study's paths.
    """
    return MarkovConfig(
        name="study-preset-6-state",
        states_mbps=[5.0, 10.0, 25.0, 50.0, 100.0, 200.0],
        transition=[
            [0.50, 0.30, 0.10, 0.05, 0.03, 0.02],
            [0.20, 0.40, 0.25, 0.10, 0.03, 0.02],
            [0.05, 0.15, 0.45, 0.25, 0.07, 0.03],
            [0.03, 0.05, 0.15, 0.45, 0.25, 0.07],
            [0.02, 0.03, 0.05, 0.15, 0.45, 0.30],
            [0.02, 0.03, 0.05, 0.10, 0.30, 0.50],
        ],
        step_s=step_s,
        seed=seed,
        initial_state=initial_state,
        source="study preset: taiwanfifi/AICoMM experiments/legacy-scripts/run_batch30_adaptive_protocol.py",
    )
