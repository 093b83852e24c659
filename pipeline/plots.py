"""The figures the stages save and log: weight violins, training curves, the comparison chart."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pipeline.files import atomic_write  # noqa: E402


def save_png(figure: plt.Figure, path) -> None:
    with atomic_write(path) as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


VIOLIN_SAMPLE = 20_000  # weights per layer behind each density estimate, shared by the replicates


def weight_violins(kernels: dict[int, dict[str, np.ndarray]], title: str) -> plt.Figure:
    """Per Dense layer, one violin per replicate (seed) of its trained kernel, on a shared axis.

    A large kernel is thinned to an evenly strided sample: the density looks the same and the
    plot takes a fraction of the time; its extremes are drawn exactly.
    """
    if not kernels:  # every replicate diverged: no weights worth drawing
        figure, axis = plt.subplots(figsize=(6, 2))
        axis.text(0.5, 0.5, f"{title}: no finished replicate (every one diverged)", ha="center", va="center")
        axis.set_axis_off()
        return figure
    per_replicate = max(1, VIOLIN_SAMPLE // len(kernels))

    def sample(kernel) -> np.ndarray:
        weights = np.asarray(kernel, dtype=np.float32).ravel()
        if len(weights) <= per_replicate:
            return weights
        thinned = weights[:: len(weights) // per_replicate]
        return np.concatenate([thinned, [weights.min(), weights.max()]])

    weights = pd.concat(
        pd.DataFrame({"layer": layer, "seed": seed, "weight": sample(kernel)})
        for seed, layers in kernels.items()
        for layer, kernel in layers.items()
    )
    layers = len(next(iter(kernels.values())))
    figure, axis = plt.subplots(figsize=(2 + (1.2 + 0.3 * len(kernels)) * layers, 4.5))
    sns.violinplot(data=weights, x="layer", y="weight", hue="seed", cut=0, ax=axis, density_norm="width", linewidth=0.5)
    axis.set(title=f"{title}: trained Dense kernels, one violin per seed", xlabel="", ylabel="weight")
    figure.tight_layout()
    return figure


def training_curves(histories: dict[int, pd.DataFrame], title: str) -> plt.Figure:
    """Loss and accuracy by epoch, training against validation: the mean over replicates and a
    band of one standard deviation."""
    long = pd.concat(histories.values()).melt(id_vars=["epoch", "seed"], var_name="metric")
    long["split"] = np.where(long["metric"].str.startswith("val_"), "validation", "train")
    long["metric"] = long["metric"].str.removeprefix("val_")
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ["loss", "accuracy"]):
        data = long[long["metric"] == metric]
        sns.lineplot(data=data, x="epoch", y="value", hue="split", errorbar="sd", marker="o", ax=axis)
        axis.set(title=metric, xlabel="epoch", ylabel=metric)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    figure.suptitle(f"{title}: mean of {len(histories)} seeds, band ± 1 standard deviation")
    figure.tight_layout()
    return figure


def comparison_chart(table: pd.DataFrame, replicates: pd.DataFrame, champion: str, tied: list[str]) -> plt.Figure:
    """Per variant, validation and test accuracy: every replicate as a dot, the mean with its 95%
    t-interval, the seed ensemble as a diamond; the champion in bold, its ties in italics."""
    order = table["variant"].tolist()
    rows = range(len(order))
    figure, axes = plt.subplots(1, 2, sharey=True, figsize=(13, 0.55 * len(order) + 2))
    for axis, split in zip(axes, ["val", "test"]):
        sns.stripplot(data=replicates, x=f"{split}_accuracy", y="variant", order=order, color="0.55", size=4, jitter=0.15, ax=axis)
        means = table[f"{split}_accuracy_mean"].to_numpy()
        low, high = table[f"{split}_accuracy_ci_low"].to_numpy(), table[f"{split}_accuracy_ci_high"].to_numpy()
        errors = np.nan_to_num([means - low, high - means])  # one seed: no interval to draw
        axis.errorbar(means, rows, xerr=errors, fmt="o", color="C0", capsize=3, label="mean, 95% t-interval")
        if split == "test":
            axis.scatter(table["ensemble_test_accuracy"], rows, marker="D", color="C3", zorder=3, label="seed ensemble")
        axis.set(xlabel=f"{'validation' if split == 'val' else 'test'} accuracy", ylabel="")
        axis.set_xlim(max(axis.get_xlim()[0], 0.0), min(axis.get_xlim()[1], 1.0))  # accuracy lives in [0, 1]
        axis.grid(axis="x", alpha=0.3)
        axis.legend(loc="lower left", fontsize="small")
    for label in axes[0].get_yticklabels():
        if label.get_text() == champion:
            label.set_fontweight("bold")
        elif label.get_text() in tied:
            label.set_fontstyle("italic")
    figure.suptitle(f"Variants by mean validation accuracy (champion {champion} in bold, variants tied with it in italics)")
    figure.tight_layout()
    return figure
