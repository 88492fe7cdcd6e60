"""Statistics against worked examples from the literature and against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from imerbench.stats import (
    area_under_mr,
    average_ranks,
    friedman,
    friedman_from_ranks,
    holm,
    nemenyi_cd,
    nemenyi_q,
    paired_t,
    summary,
)


def test_demsar_2006_worked_example() -> None:
    # Demšar (JMLR 2006), section 3.2.2: four classifiers on 14 data sets with average ranks
    # 3.143, 2.000, 2.893, 1.964 give chi2_F = 9.28, F_F = 3.69, and with q_0.05 = 2.569 a
    # Nemenyi critical difference of 1.25.
    result = friedman_from_ranks([3.143, 2.000, 2.893, 1.964], n_blocks=14)
    assert result.chi2 == pytest.approx(9.28, abs=0.01)
    assert result.f == pytest.approx(3.69, abs=0.01)
    assert nemenyi_q(4) == pytest.approx(2.569, abs=0.001)
    assert nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)


@pytest.mark.parametrize(("k", "q"), [(2, 1.960), (3, 2.343), (5, 2.728), (10, 3.164)])
def test_nemenyi_critical_values_match_demsar_table(k: int, q: float) -> None:
    assert nemenyi_q(k) == pytest.approx(q, abs=0.002)


def test_friedman_matches_scipy_without_ties() -> None:
    gen = np.random.default_rng(0)
    for _ in range(20):
        scores = gen.normal(size=(12, 5)) + np.arange(5) * 0.3
        ours = friedman(scores)
        chi2, p = sps.friedmanchisquare(*scores.T)
        assert ours.chi2 == pytest.approx(chi2, rel=1e-9)
        assert ours.p_chi2 == pytest.approx(p, rel=1e-9)


def test_average_ranks_average_ties_and_respect_direction() -> None:
    scores = np.array([[0.9, 0.8, 0.8], [0.5, 0.7, 0.6]])
    assert average_ranks(scores).tolist() == pytest.approx([2.0, 1.75, 2.25])
    assert average_ranks(scores, higher_is_better=False).tolist() == pytest.approx(
        [2.0, 2.25, 1.75]
    )


def test_paired_t_matches_scipy() -> None:
    gen = np.random.default_rng(1)
    for n in (2, 3, 10):
        a, b = gen.normal(size=n), gen.normal(size=n)
        ours = paired_t(a, b)
        ref = sps.ttest_rel(a, b)
        assert ours.t == pytest.approx(ref.statistic, rel=1e-9)
        assert ours.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert math.isnan(paired_t([1.0], [2.0]).p)
    assert math.isnan(paired_t([1.0, 2.0], [0.0, 1.0]).p)  # zero spread: no test


def test_holm_worked_example() -> None:
    # p = 0.01, 0.04, 0.03, 0.005 with m = 4: sorted 0.005*4 = 0.02, 0.01*3 = 0.03,
    # 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06; back in the original order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.5, float("nan"), 0.01])
    assert adjusted[0] == pytest.approx(0.5) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.02)


def test_summary_interval_matches_scipy() -> None:
    x = [0.61, 0.64, 0.60, 0.66]
    s = summary(x)
    low, high = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert s.mean == pytest.approx(np.mean(x))
    assert s.std == pytest.approx(np.std(x, ddof=1))
    assert s.mean - s.ci95 == pytest.approx(low) and s.mean + s.ci95 == pytest.approx(high)
    assert math.isnan(summary([0.5]).ci95)


def test_area_under_mr_is_the_mean_of_a_linear_curve() -> None:
    rates = [0.0, 0.3, 0.5, 0.7]
    assert area_under_mr(rates, [0.8 - r for r in rates]) == pytest.approx(0.8 - 0.35)
    assert area_under_mr([0.0, 0.7], [0.6, 0.6]) == pytest.approx(0.6)
    assert math.isnan(area_under_mr([0.3], [0.5]))
