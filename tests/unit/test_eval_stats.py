"""Tests for scout.stats: bootstrap intervals behave like intervals, paired tests agree with scipy and
are defined in the degenerate cases, p-value adjustments, and the report formatting."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from scout.stats import (
    Summary,
    adjust_pvalues,
    bonferroni,
    bootstrap_ci,
    holm,
    paired_bootstrap_diff,
    paired_t_test,
    relative,
    relative_ci,
    wilcoxon_test,
)

# ---- bootstrap ---------------------------------------------------------------------------------------------


def test_ci_contains_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(42)
    small = rng.random(50)
    large = rng.random(2000)
    p_small, lo_small, hi_small = bootstrap_ci(small)
    p_large, lo_large, hi_large = bootstrap_ci(large)
    assert p_small == pytest.approx(small.mean())
    assert lo_small < p_small < hi_small
    assert lo_large < p_large < hi_large
    assert (hi_large - lo_large) < 0.4 * (hi_small - lo_small)  # width ~ 1/sqrt(n): ratio about 0.16


def test_ci_width_matches_normal_theory() -> None:
    values = np.array([1.0] * 240 + [0.0] * 160)  # Bernoulli(0.6), n = 400
    _, lo, hi = bootstrap_ci(values, n_boot=4000)
    expected = 2 * 1.959964 * math.sqrt(0.6 * 0.4 / 400)
    assert hi - lo == pytest.approx(expected, rel=0.1)
    _, lo90, hi90 = bootstrap_ci(values, n_boot=4000, alpha=0.10)
    assert lo < lo90 < hi90 < hi


def test_bootstrap_seeded_determinism() -> None:
    values = np.random.default_rng(0).normal(size=120)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_constant_and_single() -> None:
    assert bootstrap_ci([0.7] * 30) == pytest.approx((0.7, 0.7, 0.7))
    assert bootstrap_ci([0.25]) == (0.25, 0.25, 0.25)


def test_bootstrap_custom_stat_without_axis() -> None:
    values = np.random.default_rng(1).exponential(size=80)
    fast = bootstrap_ci(values, stat=np.median, n_boot=300)
    slow = bootstrap_ci(values, stat=lambda x: float(np.median(x)), n_boot=300)
    assert fast == pytest.approx(slow)


def test_bootstrap_large_n_uses_blocks() -> None:
    values = np.random.default_rng(2).random(5000)  # 2000 x 5000 indices: more than one block
    point, lo, hi = bootstrap_ci(values)
    assert lo < point < hi
    assert hi - lo == pytest.approx(2 * 1.96 * values.std() / math.sqrt(values.size), rel=0.15)


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [math.inf]])
def test_bootstrap_rejects_bad_values(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        bootstrap_ci(bad)


def test_bootstrap_rejects_bad_params() -> None:
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], alpha=1.5)


def test_paired_bootstrap_diff() -> None:
    rng = np.random.default_rng(5)
    b = rng.random(200)
    a = b + 0.1
    assert paired_bootstrap_diff(a, b) == pytest.approx((0.1, 0.1, 0.1))
    noisy = b + 0.05 + rng.normal(scale=0.05, size=200)
    point, lo, hi = paired_bootstrap_diff(noisy, b)
    assert 0.0 < lo < point < hi
    # The pairing removes example variance: the interval is much narrower than an unpaired one of a alone.
    _, lo_a, hi_a = bootstrap_ci(noisy)
    assert hi - lo < 0.5 * (hi_a - lo_a)
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0, 2.0], [1.0])


def test_relative_and_relative_ci() -> None:
    assert relative(0.5, 0.4) == pytest.approx(125.0)
    assert relative(0.612, 0.612) == pytest.approx(100.0)
    assert math.isnan(relative(0.3, 0.0))
    rng = np.random.default_rng(9)
    ref = rng.random(150) + 0.2
    test = ref * 0.9
    point, lo, hi = relative_ci(test, ref)
    assert point == pytest.approx(90.0)
    assert lo == pytest.approx(90.0) and hi == pytest.approx(90.0)
    point, lo, hi = relative_ci(ref + rng.normal(scale=0.1, size=150), ref)
    assert lo < point < hi
    assert all(math.isnan(x) for x in relative_ci([1.0, 2.0], [0.0, 0.0]))  # no reference, no ratio


# ---- paired tests ------------------------------------------------------------------------------------------


def test_paired_t_test_known_values() -> None:
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    b = [2.0, 2.0, 4.0, 5.0, 7.0]
    t, p = paired_t_test(a, b)
    # differences -1, 0, -1, -1, -2: mean -1, sd sqrt(0.5), se sqrt(0.1) -> t = -sqrt(10)
    assert t == pytest.approx(-math.sqrt(10.0))
    ref = sps.ttest_rel(a, b)
    assert t == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue)
    assert p == pytest.approx(2 * sps.t.sf(math.sqrt(10.0), df=4))


def test_wilcoxon_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    a = rng.random(30)
    b = a - 0.05 + rng.normal(scale=0.1, size=30)
    stat, p = wilcoxon_test(a, b)
    ref = sps.wilcoxon(a, b)
    assert stat == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue)
    # hand case: differences 1, 0, 2, 3 -> zero dropped, all positive, W- = 0, exact p = 2 / 2**3
    assert wilcoxon_test([1, 2, 3, 5], [0, 2, 1, 2]) == pytest.approx((0.0, 0.25))


def test_zero_differences_are_defined_and_quiet() -> None:
    a = [0.2, 0.5, 0.9, 0.1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert paired_t_test(a, a) == (0.0, 1.0)
        assert wilcoxon_test(a, a) == (0.0, 1.0)
        t, p = paired_t_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
        assert t == math.inf and p == 0.0
        t, p = paired_t_test([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
        assert t == -math.inf and p == 0.0


def test_paired_tests_reject_bad_input() -> None:
    with pytest.raises(ValueError):
        paired_t_test([1.0], [2.0])
    with pytest.raises(ValueError):
        wilcoxon_test([1.0, 2.0], [1.0, 2.0, 3.0])


# ---- multiple comparisons ----------------------------------------------------------------------------------


def test_bonferroni_caps_at_one() -> None:
    assert bonferroni([0.01, 0.2, 0.5]) == pytest.approx([0.03, 0.6, 1.0])
    assert bonferroni([]) == []
    with pytest.raises(ValueError):
        bonferroni([1.2])


def test_holm_known_values_and_dominance() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.04, 0.001, 0.02, 0.5]) == pytest.approx([0.08, 0.004, 0.06, 0.5])
    ps = list(np.random.default_rng(0).random(12) * 0.2)
    for h, b in zip(holm(ps), bonferroni(ps), strict=True):
        assert h <= b + 1e-12
    assert adjust_pvalues([0.01, 0.04, 0.03], "holm") == holm([0.01, 0.04, 0.03])
    assert adjust_pvalues([0.01], "bonferroni") == [0.01]
    with pytest.raises(ValueError):
        adjust_pvalues([0.1], "bh")


# ---- Summary -----------------------------------------------------------------------------------------------


def test_summary_fmt() -> None:
    assert Summary(0.612, 0.571, 0.65, 200).fmt() == "0.612 [0.571, 0.650]"
    assert Summary(0.5, 0.25, 0.75, 4).fmt(digits=1) == "0.5 [0.2, 0.8]"


def test_summary_of() -> None:
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5]
    summary = Summary.of(values, seed=1)
    point, lo, hi = bootstrap_ci(values, seed=1)
    assert (summary.mean, summary.lo, summary.hi, summary.n) == (point, lo, hi, 8)
    assert summary.as_dict() == {"mean": point, "lo": lo, "hi": hi, "n": 8}
