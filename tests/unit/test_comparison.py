"""pipeline/comparison.py on constructed cases with known answers: the champion's rule and its ties
(McNemar with Holm, the paired t-test) against scipy called another way, and the search's
overstatement worked by hand."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from pipeline import stats
from pipeline.comparison import comparison_table, promoted_paragraph, promoted_table
from pipeline.config import load_params, parse_params
from pipeline.scoring import Ensemble
from tests.helpers import REPO_ROOT, one_hot_rows, with_value


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


def test_the_overstatement_is_the_search_score_minus_the_confirmed_mean(default_params):
    """A hand-worked case: the search said 0.9900 on its two seeds; five fresh seeds average 0.9850."""
    raw = with_value("promoted", {"mlp-256-64": {"study": "s", "trial": 7, "seeds": [100, 101], "val_accuracy": 0.99}})
    params = parse_params(raw)
    table = pd.DataFrame({
        "variant": ["mlp-512-256-128", "mlp-256-64"], "val_accuracy_mean": [0.987, 0.985],
        "val_accuracy_ci_low": [0.98, 0.982], "val_accuracy_ci_high": [0.99, 0.988],
        "ensemble_val_accuracy": [0.99, 0.9871], "ensemble_test_accuracy": [0.989, 0.9866],
    })
    row = promoted_table(params, table).iloc[0]
    assert (row["variant"], row["trial"], row["search_seeds"], row["rank"]) == ("mlp-256-64", 7, "100 101", 2)
    assert row["overstatement"] == pytest.approx(0.005)
    assert (row["val_accuracy_ci_low"], row["ensemble_test_accuracy"]) == (0.982, 0.9866)
    text = promoted_paragraph(promoted_table(params, table), [0, 1, 2, 3, 4], 2)
    assert "+0.50 points" in text and "2 of 2" in text
