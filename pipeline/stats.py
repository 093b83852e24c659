"""The statistics of the comparison, from scipy and statsmodels: intervals over seeds, the
probability that one variant beats another, paired tests with Holm's correction, and an exact
McNemar test.

Everything here takes one value per replicate (seed); with a single replicate there is no
spread to estimate, and every function answers NaN rather than a number it cannot know.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student's t-interval of the mean (n - 1 degrees of freedom)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return (np.nan, np.nan)
    if np.ptp(values) == 0:  # no spread at all: the interval is the value itself
        return (float(values[0]), float(values[0]))
    low, high = stats.t.interval(confidence, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return (float(low), float(high))


def probability_better(a, b) -> float:
    """The fraction of pairs (one value of a, one of b) in which a is higher, ties counting half:
    the Mann-Whitney U statistic of a over the number of pairs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return np.nan
    return float(stats.mannwhitneyu(a, b).statistic / (len(a) * len(b)))


def paired_p_value(a, b) -> float:
    """Two-sided paired t-test of a against b, paired by position (by seed)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2:
        return np.nan
    if np.all(a == b):  # identical pairs: nothing to tell apart (scipy would answer NaN)
        return 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaNs left out and kept as NaN), by
    statsmodels (scipy offers Benjamini-Hochberg and -Yekutieli, not Holm)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    known = ~np.isnan(p)
    if known.any():
        adjusted[known] = multipletests(p[known], method="holm")[1]
    return adjusted


def mcnemar_exact(correct_a, correct_b) -> tuple[int, int, float]:
    """Exact McNemar test of two classifiers on the same images: (a right and b wrong, b right and
    a wrong, two-sided p), the p-value from the binomial test of the discordant pairs."""
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int(np.sum(correct_a & ~correct_b)), int(np.sum(correct_b & ~correct_a))
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    return only_a, only_b, float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def proportion_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (an ensemble's accuracy over images)."""
    if trials == 0:
        return (np.nan, np.nan)
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence, method="wilson")
    return (float(interval.low), float(interval.high))
