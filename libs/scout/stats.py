"""Uncertainty and significance for per-example scores: bootstrap CIs, paired tests, p-value adjustment.

Why: the source study reports means with bootstrap 95 % CIs and paired t-tests on n = 50-200 samples, and some
of its headline gaps did not survive a larger n. Scout reports every number the same way so that a re-measured
table can be compared with the study's, and so that "A beats B" is only said with a paired test behind it.

All functions take per-example values (one float per example, methods aligned by example for the paired ones)
and are deterministic for a given ``seed``. Bootstrap resampling is vectorised in blocks of at most
``_BLOCK_ELEMENTS`` indices, so memory stays bounded for large n; the block size depends only on n, so the
result depends only on (values, n_boot, alpha, seed, stat).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

ArrayLike = Sequence[float] | np.ndarray
Statistic = Callable[..., object]

_BLOCK_ELEMENTS = 2_000_000


def _as_1d(values: ArrayLike, name: str = "values") -> np.ndarray:
    """Validate per-example values: a non-empty, finite 1-D float array (NaN would poison every resample)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _paired(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    return x, y


def _check_params(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _index_blocks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap index matrices (rows = resamples) in blocks of bounded size, from one seeded generator."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_ELEMENTS // n)
    done = 0
    while done < n_boot:
        take = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(take, n))
        done += take


def _apply_rows(stat: Statistic, samples: np.ndarray) -> np.ndarray:
    """``stat`` over each row: use its ``axis`` argument when it has one (numpy reductions), else loop."""
    try:
        out = np.asarray(stat(samples, axis=1), dtype=np.float64)
    except TypeError:
        out = np.asarray([stat(row) for row in samples], dtype=np.float64)
    if out.shape != (samples.shape[0],):
        raise ValueError(f"stat must reduce each resample to one number, got shape {out.shape}")
    return out


def _percentile_interval(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def bootstrap_ci(
    values: ArrayLike,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    stat: Statistic = np.mean,
) -> tuple[float, float, float]:
    """Percentile bootstrap: ``(stat(values), lo, hi)`` for a ``1 - alpha`` interval.

    ``stat`` should accept ``axis=`` (numpy reductions do, and are fast); any callable on a 1-D array works.
    """
    _check_params(n_boot, alpha)
    arr = _as_1d(values)
    point = float(np.asarray(stat(arr), dtype=np.float64))
    boot = np.concatenate([_apply_rows(stat, arr[idx]) for idx in _index_blocks(arr.size, n_boot, seed)])
    lo, hi = _percentile_interval(boot, alpha)
    return point, lo, hi


def paired_bootstrap_diff(
    a: ArrayLike,
    b: ArrayLike,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    stat: Statistic = np.mean,
) -> tuple[float, float, float]:
    """Bootstrap CI of ``stat(a - b)`` over paired examples (e.g. Q2C F1 minus SnapKV F1 on the same items).

    Resampling the per-example differences keeps the pairing, which removes the example-difficulty variance
    that two independent CIs would double count. An interval excluding 0 is the bootstrap's "significant".
    """
    x, y = _paired(a, b)
    return bootstrap_ci(x - y, n_boot=n_boot, alpha=alpha, seed=seed, stat=stat)


def relative_ci(
    a: ArrayLike,
    b: ArrayLike,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``100 * mean(a) / mean(b)`` with a paired bootstrap CI: "quality relative to reference" with a CI.

    Resamples where the reference mean is 0 have no ratio and are left out of the interval; if all are, the
    interval is NaN.
    """
    _check_params(n_boot, alpha)
    x, y = _paired(a, b)
    point = relative(float(x.mean()), float(y.mean()))
    ratios: list[np.ndarray] = []
    for idx in _index_blocks(x.size, n_boot, seed):
        num = x[idx].mean(axis=1)
        den = y[idx].mean(axis=1)
        ok = den != 0
        ratios.append(100.0 * num[ok] / den[ok])
    boot = np.concatenate(ratios)
    if boot.size == 0:
        return point, math.nan, math.nan
    lo, hi = _percentile_interval(boot, alpha)
    return point, lo, hi


def relative(a_mean: float, b_mean: float) -> float:
    """``a`` as a percentage of the reference ``b`` (the study's "99.4 % of bf16"); NaN when ``b`` is 0."""
    if b_mean == 0:
        return math.nan
    return 100.0 * a_mean / b_mean


def paired_t_test(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Two-sided paired t-test ``(t, p)`` (scipy ``ttest_rel``), defined where scipy would warn.

    All differences zero (identical methods, e.g. a selector at 100 % retention): ``(0.0, 1.0)``. All
    differences equal but non-zero (no variance, every example moves the same way): ``(±inf, 0.0)``.
    Needs n >= 2.
    """
    x, y = _paired(a, b)
    if x.size < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    diff = x - y
    if not diff.any():
        return 0.0, 1.0
    if np.ptp(diff) == 0:
        return math.copysign(math.inf, float(diff[0])), 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = _sps.ttest_rel(x, y)
    return float(result.statistic), float(result.pvalue)


def wilcoxon_test(a: ArrayLike, b: ArrayLike, *, zero_method: str = "wilcox") -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test ``(stat, p)`` (scipy), the rank-based check of a paired t-test.

    F1 differences are bounded and often bimodal (an answer is found or not), where the t-test's normality is
    doubtful. ``zero_method="wilcox"`` drops zero differences (scipy's default); with all differences zero the
    result is ``(0.0, 1.0)`` instead of scipy's error or warning. scipy's small-sample warnings are silenced.
    """
    x, y = _paired(a, b)
    diff = x - y
    if not diff.any():
        return 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = _sps.wilcoxon(diff, zero_method=zero_method)
    return float(result.statistic), float(result.pvalue)


def _check_pvalues(pvalues: Sequence[float]) -> list[float]:
    ps = [float(p) for p in pvalues]
    for p in ps:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-value out of [0, 1]: {p}")
    return ps


def bonferroni(pvalues: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values ``min(1, m * p)``, in input order (m = number of tests)."""
    ps = _check_pvalues(pvalues)
    m = len(ps)
    return [min(1.0, p * m) for p in ps]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in input order: more powerful than Bonferroni, same guarantee.

    The k-th smallest p (k from 0) is multiplied by ``m - k``; a running maximum keeps the adjusted
    values monotone.
    """
    ps = _check_pvalues(pvalues)
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def adjust_pvalues(pvalues: Sequence[float], method: str = "bonferroni") -> list[float]:
    """Family-wise adjustment by name (``"bonferroni"`` or ``"holm"``), for report configs that choose one."""
    if method == "bonferroni":
        return bonferroni(pvalues)
    if method == "holm":
        return holm(pvalues)
    raise ValueError(f"unknown adjustment {method!r}; known: bonferroni, holm")


@dataclass(frozen=True)
class Summary:
    """A mean with its bootstrap interval and sample size: one table cell of a report."""

    mean: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: ArrayLike, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Summary:
        """Summarise per-example values with a percentile-bootstrap CI of the mean."""
        arr = _as_1d(values)
        mean, lo, hi = bootstrap_ci(arr, n_boot=n_boot, alpha=alpha, seed=seed)
        return cls(mean=mean, lo=lo, hi=hi, n=int(arr.size))

    def fmt(self, digits: int = 3) -> str:
        """``"0.612 [0.571, 0.650]"``: the format of the study's tables."""
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON reports."""
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}
