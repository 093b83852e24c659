"""pipeline/plots.py: a figure drawn twice from the same inputs is the same file, byte for byte (DVC
caches it: a rerun must not look like a change), whatever numpy's global generator held."""

import numpy as np
import pandas as pd

from pipeline import plots


def comparison_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two variants, three replicates each: enough dots for seaborn to jitter them."""
    replicates = pd.DataFrame({
        "variant": ["a"] * 3 + ["b"] * 3,
        "val_accuracy": [0.90, 0.91, 0.92, 0.80, 0.81, 0.82],
        "test_accuracy": [0.89, 0.90, 0.91, 0.79, 0.80, 0.81],
    })
    table = pd.DataFrame({"variant": ["a", "b"]})
    for split in ("val", "test"):
        means = replicates.groupby("variant", sort=True)[f"{split}_accuracy"].mean().to_numpy()
        table[f"{split}_accuracy_mean"] = means
        table[f"{split}_accuracy_ci_low"], table[f"{split}_accuracy_ci_high"] = means - 0.01, means + 0.01
        table[f"ensemble_{split}_accuracy"] = means + 0.005
    table["ensemble_test_ci_low"], table["ensemble_test_ci_high"] = table["ensemble_test_accuracy"] - 0.01, table["ensemble_test_accuracy"] + 0.01
    return table, replicates


def test_the_comparison_chart_is_the_same_file_whatever_numpys_global_state(tmp_path):
    table, replicates = comparison_inputs()
    drawn = []
    for seed in (1, 2):
        np.random.seed(seed)  # another caller's use of the global generator
        plots.save_png(plots.comparison_chart(table, replicates, "a", [], "ensemble"), tmp_path / f"{seed}.png")
        drawn.append((tmp_path / f"{seed}.png").read_bytes())
        assert np.random.get_state()[1][0] == np.random.RandomState(seed).get_state()[1][0], "the caller's generator untouched"
    assert drawn[0] == drawn[1]
