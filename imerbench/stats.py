"""Statistics over seeds, folds and methods, as tables built from rows need them.

- `summary`: mean, std and a 95% t-interval;
- `paired_t`: a paired t-test between two methods on the same cells (same masks and seeds);
- `holm`: Holm's step-down correction for many comparisons;
- `friedman` and `nemenyi_cd`: average ranks over (dataset, MR) blocks, the Friedman test
  with the Iman-Davenport F, and the Nemenyi critical difference (Demšar, JMLR 2006);
- `area_under_mr`: robustness as the normalized area under the score-vs-MR curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample std (ddof 1); NaN for one value
    n: int
    ci95: float  # half-width of the 95% t-interval; NaN for one value


def summary(values: np.ndarray | list[float]) -> Summary:
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Summary(math.nan, math.nan, 0, math.nan)
    if n == 1:
        return Summary(float(x[0]), math.nan, 1, math.nan)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return Summary(float(x.mean()), std, n, half)


@dataclass(frozen=True)
class PairedTest:
    mean_diff: float
    t: float
    p: float  # two-sided
    n: int


def paired_t(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> PairedTest:
    """Two-sided paired t-test of a - b; p is NaN with fewer than 2 pairs or zero spread."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    if n < 2:
        return PairedTest(float(d.mean()) if n else math.nan, math.nan, math.nan, n)
    sd = d.std(ddof=1)
    if sd == 0:
        return PairedTest(float(d.mean()), math.nan, math.nan, n)
    t = float(d.mean() / (sd / math.sqrt(n)))
    p = float(2 * sps.t.sf(abs(t), n - 1))
    return PairedTest(float(d.mean()), t, p, n)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    finite = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), np.nan)
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def average_ranks(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Mean rank of each method (column) over blocks (rows); rank 1 is best, ties averaged."""
    x = np.asarray(scores, dtype=float)
    ranks = sps.rankdata(-x if higher_is_better else x, axis=1)
    return ranks.mean(axis=0)


@dataclass(frozen=True)
class Friedman:
    chi2: float
    p_chi2: float
    f: float  # Iman-Davenport
    p_f: float
    n_blocks: int
    k: int


def friedman_from_ranks(mean_ranks: np.ndarray | list[float], n_blocks: int) -> Friedman:
    """The Friedman statistic from average ranks (no tie correction), as in Demšar (2006)."""
    r = np.asarray(mean_ranks, dtype=float)
    k, n = len(r), n_blocks
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(r**2) - k * (k + 1) ** 2 / 4)
    p_chi2 = float(sps.chi2.sf(chi2, k - 1))
    denom = n * (k - 1) - chi2
    f = (n - 1) * chi2 / denom if denom > 0 else math.inf
    p_f = float(sps.f.sf(f, k - 1, (k - 1) * (n - 1))) if math.isfinite(f) else 0.0
    return Friedman(float(chi2), p_chi2, float(f), p_f, n, k)


def friedman(scores: np.ndarray, higher_is_better: bool = True) -> Friedman:
    x = np.asarray(scores, dtype=float)
    return friedman_from_ranks(average_ranks(x, higher_is_better), x.shape[0])


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """The Nemenyi critical value q_alpha: the studentized range quantile over sqrt(2)."""
    return float(sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Two methods differ when their average ranks differ by more than this."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n_blocks))


def area_under_mr(rates: list[float], scores: list[float]) -> float:
    """Mean score over the MR range (trapezoid area divided by the span); NaN if < 2 rates."""
    pairs = sorted((r, s) for r, s in zip(rates, scores, strict=True) if not math.isnan(s))
    if len(pairs) < 2:
        return math.nan
    r, s = np.array(pairs).T
    return float(np.sum((s[1:] + s[:-1]) / 2 * np.diff(r)) / (r[-1] - r[0]))
