"""Where classifiers differ, on constructed probabilities with known answers; each statistic
against scipy or scikit-learn called another way, or a case worked by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import classification_report, confusion_matrix

from pipeline import analysis, stats
from tests.helpers import one_hot_rows


def test_the_wilson_interval_is_the_hand_formula():
    successes, n, z = 9_864, 10_000, scipy_stats.norm.ppf(0.975)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert stats.proportion_interval(successes, n) == pytest.approx((centre - half, centre + half), abs=1e-12)


def test_expected_calibration_error_on_a_hand_worked_case():
    # Four images: two at confidence 0.95 (bin 15 of 15), one right, one wrong; two at 0.55 (bin 9), both right.
    probabilities = np.full((4, 10), 0.0)
    probabilities[0, 0], probabilities[0, 1] = 0.95, 0.05
    probabilities[1, 2], probabilities[1, 3] = 0.95, 0.05
    probabilities[2, 4], probabilities[2, 5] = 0.55, 0.45
    probabilities[3, 6], probabilities[3, 7] = 0.55, 0.45
    labels = np.array([0, 9, 4, 6])
    # |0.5 - 0.95| * 2/4 + |1.0 - 0.55| * 2/4 = 0.225 + 0.225
    assert analysis.expected_calibration_error(probabilities, labels) == pytest.approx(0.45)
    table = analysis.reliability_table(probabilities, labels)
    assert table["bin"].tolist() == [8, 14] and table["images"].tolist() == [2, 2]


def test_per_class_and_confused_pairs_agree_with_scikit_learn_called_another_way():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2_000)
    predicted = np.where(rng.random(2_000) < 0.8, labels, rng.integers(0, 10, 2_000))
    report = classification_report(labels, predicted, output_dict=True, zero_division=0)
    table = analysis.per_class(labels, predicted).set_index("digit")
    for digit in range(10):
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"), ("support", "support")):
            assert table.loc[digit, ours] == pytest.approx(report[str(digit)][theirs])
    crosstab = pd.crosstab(labels, predicted)
    pairs = analysis.confused_pairs(labels, predicted, top=3)
    off_diagonal = sorted(((int(crosstab.loc[t, p]), t, p) for t in range(10) for p in range(10) if t != p), key=lambda x: (-x[0], x[1], x[2]))
    assert list(pairs.itertuples(index=False, name=None)) == [(t, p, n) for n, t, p in off_diagonal[:3]]
    assert (confusion_matrix(labels, predicted) == crosstab.to_numpy()).all()


def test_ensemble_sizes_and_nll():
    labels = np.array([0, 1, 2, 3])
    first = one_hot_rows(np.array([0, 1, 9, 9]))  # 2 of 4 right
    second = one_hot_rows(np.array([0, 9, 2, 3]), confidence=0.95)  # more sure: it wins every disagreement
    assert analysis.ensemble_sizes([first, second], labels) == [0.5, 0.75]
    expected = -np.mean(np.log(first[np.arange(4), labels]))
    assert analysis.negative_log_likelihood(first, labels) == pytest.approx(expected)
