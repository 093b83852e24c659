"""The figures the stages save and log: weight violins, training curves, the comparison chart."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pipeline.files import atomic_write  # noqa: E402


def save_png(figure: plt.Figure, path) -> None:
    with atomic_write(path) as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


VIOLIN_SAMPLE = 20_000  # weights per layer behind each density estimate


def weight_violins(kernels: dict[str, np.ndarray], title: str) -> plt.Figure:
    """One violin per Dense layer's kernel, side by side on a shared axis.

    A large kernel is thinned to an evenly strided sample of VIOLIN_SAMPLE weights: the density
    looks the same and the plot takes a tenth of the time; its extremes are drawn exactly.
    """

    def sample(kernel) -> np.ndarray:
        weights = np.asarray(kernel, dtype=np.float32).ravel()
        if len(weights) <= VIOLIN_SAMPLE:
            return weights
        thinned = weights[:: len(weights) // VIOLIN_SAMPLE]
        return np.concatenate([thinned, [weights.min(), weights.max()]])

    weights = pd.concat(pd.DataFrame({"layer": name, "weight": sample(kernel)}) for name, kernel in kernels.items())
    figure, axis = plt.subplots(figsize=(2 + 1.6 * len(kernels), 4.5))
    sns.violinplot(data=weights, x="layer", y="weight", hue="layer", cut=0, ax=axis, legend=False)
    axis.set(title=f"{title}: trained Dense kernels", xlabel="", ylabel="weight")
    figure.tight_layout()
    return figure


def training_curves(history: pd.DataFrame, title: str) -> plt.Figure:
    """Loss and accuracy by epoch, training against validation."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ["loss", "accuracy"]):
        axis.plot(history["epoch"], history[metric], "o-", label="train")
        axis.plot(history["epoch"], history[f"val_{metric}"], "o-", label="validation")
        axis.set(title=metric, xlabel="epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def comparison_chart(table: pd.DataFrame, champion: str) -> plt.Figure:
    """Validation and test accuracy of every variant; the champion's name in bold."""
    long = table.melt(id_vars="variant", value_vars=["val_accuracy", "test_accuracy"], var_name="split")
    figure, axis = plt.subplots(figsize=(9, 0.5 * len(table) + 1.5))
    sns.barplot(data=long, y="variant", x="value", hue="split", ax=axis)
    low = max(0.0, long["value"].min() - 0.02)
    axis.set(xlim=(low, 1.0), xlabel="accuracy", ylabel="", title=f"Variants by accuracy (champion: {champion})")
    for label in axis.get_yticklabels():
        if label.get_text() == champion:
            label.set_fontweight("bold")
    figure.tight_layout()
    return figure
