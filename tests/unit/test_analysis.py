"""The champion's rule and where classifiers differ, on constructed probabilities with known answers;
each statistic against scipy or scikit-learn called another way, or a case worked by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import classification_report, confusion_matrix

from pipeline import analysis, stats
from pipeline.config import load_params
from pipeline.evaluate import Ensemble, comparison_table

from tests.helpers import REPO_ROOT


def one_hot_rows(predicted: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Class probabilities whose top class is `predicted`, with `confidence` on it."""
    rows = np.full((len(predicted), 10), (1 - confidence) / 9)
    rows[np.arange(len(predicted)), predicted] = confidence
    return rows


def predictions_with(labels: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """The labels, except at the indices `wrong`, where the next digit is predicted."""
    predicted = labels.copy()
    predicted[wrong] = (labels[wrong] + 1) % 10
    return predicted


@pytest.fixture
def constructed():
    """Three variants on 200 validation images. A's replicates are the best on average, but B's
    ensemble is the best served model; C's ensemble is far behind B's."""
    params = load_params(REPO_ROOT / "params.yaml")
    names = ["mlp-a", "mlp-b", "mlp-c"]
    params = params.model_copy(update={"variants": {name: params.variants["mlp-256-64"] for name in names}})
    labels = np.arange(200) % 10
    wrong = {"mlp-a": np.arange(0, 20), "mlp-b": np.arange(10, 24), "mlp-c": np.arange(100, 160)}  # 20, 14, 60 mistakes
    ensembles = {
        name: Ensemble(one_hot_rows(predictions_with(labels, wrong[name])), one_hot_rows(labels)) for name in names
    }
    replicates = pd.DataFrame(
        [{"variant": name, "seed": seed, "val_accuracy": value, "test_loss": 0.1, "test_accuracy": 0.9}
         for name, values in {"mlp-a": [0.95, 0.96, 0.97], "mlp-b": [0.90, 0.91, 0.92], "mlp-c": [0.80, 0.81, 0.82]}.items()
         for seed, value in enumerate(values)]
    )
    metrics = {name: {"params": 1, "epochs": 1, "train_seconds": 1.0} for name in names}
    failures = {name: {} for name in names}
    return params, metrics, replicates, ensembles, {"validation": labels, "test": labels}, failures, wrong


def test_the_champion_is_the_best_served_ensemble_and_its_ties_come_from_mcnemar_with_holm(constructed):
    params, metrics, replicates, ensembles, labels, failures, wrong = constructed
    table = comparison_table(params, metrics, replicates, ensembles, labels, failures)
    assert table["variant"].tolist() == ["mlp-b", "mlp-a", "mlp-c"]
    assert table["ensemble_val_accuracy"].tolist() == [186 / 200, 180 / 200, 140 / 200]

    # Discordant images, counted by hand: B right where A is wrong (0-9), A right where B is wrong (20-23).
    def exact(b_only, other_only):  # the two-sided exact binomial p, from the binomial's CDF
        n = b_only + other_only
        return min(1.0, 2 * scipy_stats.binom.cdf(min(b_only, other_only), n, 0.5))
    # Against C: C is wrong on 100-159 and B on 10-23, never on the same image: 60 and 14.
    raw = [exact(10, 4), exact(60, 14)]
    smaller, larger = sorted(raw)
    holm = {smaller: min(1, 2 * smaller), larger: min(1, max(2 * smaller, larger))}  # Holm's step-down, two tests
    assert table["p_vs_champion"][1] == pytest.approx(holm[raw[0]])
    assert table["p_vs_champion"][2] == pytest.approx(holm[raw[1]])
    assert table["tied_with_champion"].tolist()[1:] == [True, False]


def test_replicate_mean_keeps_the_earlier_rule(constructed):
    params, metrics, replicates, ensembles, labels, failures, _ = constructed
    params = params.model_copy(update={"champion": params.champion.model_copy(update={"select": "replicate_mean"})})
    table = comparison_table(params, metrics, replicates, ensembles, labels, failures)
    assert table["variant"].tolist() == ["mlp-a", "mlp-b", "mlp-c"]
    by_seed = replicates.pivot(index="seed", columns="variant", values="val_accuracy")
    raw = [scipy_stats.ttest_rel(by_seed["mlp-a"], by_seed[v]).pvalue for v in ("mlp-b", "mlp-c")]
    assert table["p_vs_champion"][1:].tolist() == pytest.approx(list(stats.holm(raw)))


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
