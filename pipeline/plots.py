"""The figures the stages save and log: weight violins, training curves, the comparison chart."""

from __future__ import annotations

import contextlib
import warnings

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


@contextlib.contextmanager
def fixed_global_random_state(seed: int = 0):
    """numpy's global generator seeded for the block, then as it was: the same inputs draw the same
    figure, byte for byte (DVC caches it)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def comparison_chart(table: pd.DataFrame, replicates: pd.DataFrame, champion: str, tied: list[str], rule: str) -> plt.Figure:
    """Per variant, validation and test accuracy: every replicate as a dot, their mean with its 95%
    t-interval, the seed ensemble (what is served) as a diamond, with its 95% Wilson interval on the
    test set; the champion in bold, its ties in italics."""
    order = table["variant"].tolist()
    rows = np.arange(len(order))
    figure, axes = plt.subplots(1, 2, sharey=True, figsize=(13, 0.55 * len(order) + 2))
    for axis, split in zip(axes, ["val", "test"]):
        with fixed_global_random_state():  # seaborn's jitter draws from numpy's global generator
            sns.stripplot(data=replicates, x=f"{split}_accuracy", y="variant", order=order, color="0.55", size=4, jitter=0.15, ax=axis)
        means = table[f"{split}_accuracy_mean"].to_numpy()
        low, high = table[f"{split}_accuracy_ci_low"].to_numpy(), table[f"{split}_accuracy_ci_high"].to_numpy()
        errors = np.nan_to_num([means - low, high - means])  # one seed: no interval to draw
        axis.errorbar(means, rows - 0.15, xerr=errors, fmt="o", color="C0", capsize=3, label="replicates' mean, 95% t-interval")
        ensemble = table[f"ensemble_{split}_accuracy"].to_numpy()
        if split == "test":
            spread = np.nan_to_num([ensemble - table["ensemble_test_ci_low"], table["ensemble_test_ci_high"] - ensemble])
            axis.errorbar(ensemble, rows + 0.15, xerr=spread, fmt="D", color="C3", capsize=3, label="seed ensemble, 95% Wilson interval")
        else:
            axis.scatter(ensemble, rows + 0.15, marker="D", color="C3", zorder=3, label="seed ensemble")
        axis.set(xlabel=f"{'validation' if split == 'val' else 'test'} accuracy", ylabel="")
        axis.set_xlim(max(axis.get_xlim()[0], 0.0), min(axis.get_xlim()[1], 1.0))  # accuracy lives in [0, 1]
        axis.grid(axis="x", alpha=0.3)
        axis.legend(loc="lower left", fontsize="small")
    for label in axes[0].get_yticklabels():
        if label.get_text() == champion:
            label.set_fontweight("bold")
        elif label.get_text() in tied:
            label.set_fontstyle("italic")
    by = "seed ensemble's validation accuracy" if rule == "ensemble" else "replicates' mean validation accuracy"
    figure.suptitle(f"Variants by their {by} (champion {champion} in bold, variants tied with it in italics)")
    figure.tight_layout()
    return figure


def reliability_diagram(tables: dict[str, pd.DataFrame], eces: dict[str, float]) -> plt.Figure:
    """Accuracy against confidence per bin of top-label confidence, one line per classifier; the diagonal is perfect calibration."""
    figure, axis = plt.subplots(figsize=(6, 6))
    axis.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    for (name, table), color in zip(tables.items(), ("C3", "C0")):
        axis.plot(table["confidence"], table["accuracy"], marker="o", color=color, label=f"{name} (ECE {eces[name]:.4f})")
    axis.set(xlabel="confidence (top probability), mean of the bin", ylabel="accuracy of the bin", xlim=(0, 1), ylim=(0, 1))
    axis.set_title("Reliability on the test set, 15 bins")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    return figure


def image_grid(images: np.ndarray, captions: list[str], title: str, columns: int = 8) -> plt.Figure:
    """Test images (28 x 28 intensities) in a grid, each with its caption."""
    count = max(len(images), 1)
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows + 0.6), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if index < len(images):
            axis.imshow(images[index].reshape(28, 28), cmap="gray_r", vmin=0, vmax=255)
            axis.set_title(captions[index], fontsize=7)
    if not len(images):
        axes.flat[0].text(0.5, 0.5, "none", ha="center", va="center")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def accuracy_cost_chart(trials: pd.DataFrame, front: pd.DataFrame) -> plt.Figure:
    """Every complete trial's validation accuracy against its training seconds; the front (what each
    extra second buys) as a step line, its designs named."""
    complete = trials[trials["state"] == "complete"]
    figure, axis = plt.subplots(figsize=(9, 5))
    axis.scatter(complete["train_seconds"], complete["val_accuracy"], color="0.6", s=18, label="complete trials")
    axis.step(front["train_seconds"], front["val_accuracy"], where="post", color="C3", marker="o", label="the front: none faster and better")
    for _, row in front.iterrows():
        axis.annotate(f"{row['variant']}", (row["train_seconds"], row["val_accuracy"]), fontsize=7, xytext=(4, -10), textcoords="offset points")
    axis.set(xscale="log", xlabel="training seconds (the trial's seeds together; log scale)", ylabel="validation accuracy, mean over seeds")
    axis.set_title("The search: validation accuracy against training time")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def search_figures(study) -> dict[str, plt.Figure]:
    """Optuna's own figures of a study, drawn by matplotlib (offline): the optimisation history, the
    parameters' importances (fANOVA) and every trial's per-epoch value. One that cannot be drawn yet
    (importances need two finished trials that differ) is left out, and said."""
    from optuna.visualization import matplotlib as optuna_plots  # the search's only: not every stage's import

    drawers = {
        "optimization_history.png": optuna_plots.plot_optimization_history,
        "param_importances.png": optuna_plots.plot_param_importances,
        "intermediate_values.png": optuna_plots.plot_intermediate_values,
    }
    figures = {}
    for name, draw in drawers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib figures experimental
            try:
                axes = draw(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                print(f"search: no {name} yet ({error})")
                continue
        figure = np.ravel(axes)[0].figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        figures[name] = figure
    return figures
