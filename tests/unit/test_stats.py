"""The comparison's statistics on inputs with known answers, and against scipy called another way."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pipeline import stats


def test_the_interval_is_students_t_interval_of_the_mean():
    # 1..5: mean 3, standard error sqrt(2.5 / 5), t(0.975, 4) = 2.776445: 3 -+ 1.963243.
    assert stats.mean_interval([1, 2, 3, 4, 5]) == pytest.approx((1.036757, 4.963243), abs=1e-6)
    values = [0.9812, 0.9790, 0.9805, 0.9821, 0.9799]
    low, high = scipy_stats.ttest_1samp(values, 0).confidence_interval(0.95)
    assert stats.mean_interval(values) == pytest.approx((low, high), rel=1e-12)


def test_the_interval_of_one_value_is_unknown_and_of_equal_values_is_the_value():
    assert np.isnan(stats.mean_interval([0.98])).all()
    assert stats.mean_interval([0.98, 0.98, 0.98]) == (0.98, 0.98)


def test_the_probability_of_beating_counts_pairs_and_half_the_ties():
    champion, variant = [0.98, 0.97, 0.99], [0.96, 0.97, 0.95]
    # 0.98 beats all three; 0.97 beats 0.96 and 0.95 and ties 0.97; 0.99 beats all three: 8.5 of 9.
    assert stats.probability_better(champion, variant) == pytest.approx(8.5 / 9)
    assert stats.probability_better(variant, champion) == pytest.approx(0.5 / 9)
    assert stats.probability_better([1, 2], [1, 2]) == pytest.approx(0.5)
    assert np.isnan(stats.probability_better([0.98], [0.97]))


def test_the_paired_test_is_scipys_paired_t_test():
    champion = np.array([0.9846, 0.9838, 0.9851, 0.9842, 0.9849])
    variant = np.array([0.9822, 0.9830, 0.9815, 0.9833, 0.9826])
    expected = scipy_stats.ttest_1samp(champion - variant, 0).pvalue  # the paired test is a one-sample test of the differences
    assert stats.paired_p_value(champion, variant) == pytest.approx(expected, rel=1e-12)
    # Differences 1, 2, 3: mean 2, standard error 1 / sqrt(3), t = 3.4641 on 2 degrees of freedom: p = 0.074180.
    assert stats.paired_p_value([2, 4, 6], [1, 2, 3]) == pytest.approx(0.074180, abs=1e-6)
    assert stats.paired_p_value([0.98, 0.97], [0.98, 0.97]) == 1.0
    assert np.isnan(stats.paired_p_value([0.98], [0.97]))


def test_holm_adjusts_step_down_and_keeps_the_order():
    # The textbook example: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> 0.06 (monotone).
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    adjusted = stats.holm([0.02, np.nan, 0.01])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.02])
    assert np.isnan(adjusted[1])


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs():
    a = np.array([True] * 50 + [True] * 1 + [False] * 9 + [False] * 40)
    b = np.array([True] * 50 + [False] * 1 + [True] * 9 + [False] * 40)
    only_a, only_b, p = stats.mcnemar_exact(a, b)
    assert (only_a, only_b) == (1, 9)
    assert p == pytest.approx(2 * (1 + 10) / 1024)  # two-sided: 2 P(X <= 1), X ~ Binomial(10, 1/2)
    assert stats.mcnemar_exact(a, a) == (0, 0, 1.0)
