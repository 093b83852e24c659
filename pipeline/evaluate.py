"""Stage `evaluate`: every replicate and every seed ensemble on the untouched test set; the
comparison with intervals and tests; the champion.

The champion is the variant with the best *mean validation* accuracy over its seeds: the test
set only reports, it never chooses (the first study picked its best model on the test set).
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pandas as pd

from pipeline import plots, stage, stats, tracking
from pipeline.config import Params, load_params
from pipeline.data import DataError, load_split, raw_pixels
from pipeline.ensemble import ensemble_probabilities
from pipeline.files import atomic_write
from pipeline.paths import (
    EPOCHS_CSV,
    PROCESSED_DIR,
    REPORTS_DIR,
    replicate_history_path,
    replicate_model_path,
    split_path,
    train_reports_dir,
)

COLUMNS = [
    "variant",
    "hidden_layers",
    "batch_norm",
    "dropout",
    "params",
    "epochs",
    "seeds",
    "val_accuracy_mean",
    "val_accuracy_std",
    "test_accuracy_mean",
    "test_accuracy_std",
    "test_accuracy_ci_low",
    "test_accuracy_ci_high",
    "test_loss_mean",
    "ensemble_test_accuracy",
    "prob_champion_better",
    "p_vs_champion",
    "tied_with_champion",
    "train_seconds",
]
CHAMPION_METRICS = COLUMNS[COLUMNS.index("val_accuracy_mean") : COLUMNS.index("ensemble_test_accuracy") + 1]
# What each variant's run and registered version get from the comparison.
RUN_METRICS = [
    "test_accuracy_mean", "test_accuracy_ci_low", "test_accuracy_ci_high", "test_loss_mean",
    "ensemble_test_accuracy", "prob_champion_better", "p_vs_champion",
]
SIGNIFICANCE = 0.05
MARKDOWN_FORMATS = [
    {"dropout": ".1f", "train_seconds": ".1f", "prob_champion_better": ".2f", "p_vs_champion": ".3g"}.get(column, ".4f")
    for column in COLUMNS
]


def trained(variant: str, seeds: list[int]) -> dict:
    """The train stage's metrics.json, checked against the seeds params.yaml asks for."""
    metrics_file = train_reports_dir(variant) / "metrics.json"
    files = [path for seed in seeds for path in (replicate_model_path(variant, seed), replicate_history_path(variant, seed))]
    missing = [str(path) for path in [metrics_file, *files] if not path.is_file()]
    if missing:
        raise DataError(f"{variant} has no trained {', '.join(missing)}: run `dvc repro train@{variant}`")
    metrics = json.loads(metrics_file.read_text())
    if metrics["seeds"] != seeds:
        raise DataError(f"{variant} was trained with seeds {metrics['seeds']}, params say {seeds}: run `dvc repro`")
    return metrics


def epoch_bands(variants: list[str], seeds: list[int]) -> pd.DataFrame:
    """Per variant and epoch, each metric's mean over the seeds and a band of one standard deviation
    (`val_accuracy`, `val_accuracy_low`, `val_accuracy_high`; for one seed the band is the mean):
    what dvc.yaml's charts overlay."""
    frames = []
    for variant in variants:
        history = pd.concat(pd.read_csv(replicate_history_path(variant, seed)) for seed in seeds).groupby("epoch")
        mean, spread = history.mean(), history.std().fillna(0.0)
        bands = pd.concat([mean, (mean - spread).add_suffix("_low"), (mean + spread).add_suffix("_high")], axis=1)
        frames.append(bands.reset_index().assign(variant=variant))
    return pd.concat(frames, ignore_index=True)


def scores_on_test(probabilities: np.ndarray, y_test: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Loss (categorical cross-entropy, as in training), accuracy, and which images were right."""
    correct = probabilities.argmax(axis=1) == y_test.argmax(axis=1)
    loss = float(np.mean(keras.losses.categorical_crossentropy(y_test, probabilities)))
    return loss, float(correct.mean()), correct


def score_variant(variant: str, metrics: dict, x_test, y_test) -> tuple[pd.DataFrame, float, np.ndarray]:
    """Per replicate its validation and test scores; the ensemble's test accuracy and right answers."""
    seeds = sorted(metrics["seeds"])  # the order the served ensemble averages in, to the last bit
    members = [keras.saving.load_model(replicate_model_path(variant, seed), compile=False) for seed in seeds]
    validation = {r["seed"]: r["val_accuracy"] for r in metrics["replicates"]}
    probabilities = [member.predict_on_batch(x_test) for member in members]
    rows = []
    for seed, member_probabilities in zip(seeds, probabilities):
        loss, accuracy, _ = scores_on_test(member_probabilities, y_test)
        rows.append({"variant": variant, "seed": seed, "val_accuracy": validation[seed], "test_loss": loss, "test_accuracy": accuracy})
    _, ensemble_accuracy, ensemble_correct = scores_on_test(ensemble_probabilities(probabilities), y_test)
    return pd.DataFrame(rows), ensemble_accuracy, ensemble_correct


def comparison_table(
    params: Params, metrics_by_variant: dict[str, dict], replicates: pd.DataFrame, ensembles: dict[str, float]
) -> pd.DataFrame:
    """One row per variant, best mean validation accuracy first, compared with the champion."""
    rows = []
    for variant, spec in params.variants.items():
        scores = replicates[replicates["variant"] == variant]
        metrics = metrics_by_variant[variant]
        low, high = stats.mean_interval(scores["test_accuracy"])
        val_low, val_high = stats.mean_interval(scores["val_accuracy"])
        rows.append(
            {
                "variant": variant,
                "hidden_layers": "-".join(map(str, spec.hidden_layers)),
                "batch_norm": spec.batch_norm,
                "dropout": spec.dropout,
                "params": metrics["params"],
                "epochs": metrics["epochs"],
                "seeds": len(scores),
                "val_accuracy_mean": scores["val_accuracy"].mean(),
                "val_accuracy_std": scores["val_accuracy"].std(),
                "test_accuracy_mean": scores["test_accuracy"].mean(),
                "test_accuracy_std": scores["test_accuracy"].std(),
                "test_accuracy_ci_low": low,
                "test_accuracy_ci_high": high,
                "test_loss_mean": scores["test_loss"].mean(),
                "ensemble_test_accuracy": ensembles[variant],
                "train_seconds": metrics["train_seconds"],
                "val_accuracy_ci_low": val_low,  # drawn in comparison.png, not a column of the table
                "val_accuracy_ci_high": val_high,
            }
        )
    # Best mean validation accuracy first; ties keep params.yaml's order.
    table = pd.DataFrame(rows).sort_values("val_accuracy_mean", ascending=False, kind="stable").reset_index(drop=True)
    champion = replicates[replicates["variant"] == table["variant"][0]].sort_values("seed")["val_accuracy"].to_numpy()
    others = [replicates[replicates["variant"] == v].sort_values("seed")["val_accuracy"].to_numpy() for v in table["variant"][1:]]
    table["prob_champion_better"] = [np.nan] + [stats.probability_better(champion, other) for other in others]
    table["p_vs_champion"] = [np.nan, *stats.holm([stats.paired_p_value(champion, other) for other in others])]
    table["tied_with_champion"] = [pd.NA] + [pd.NA if math.isnan(p) else bool(p >= SIGNIFICANCE) for p in table["p_vs_champion"][1:]]
    return table


def ensure_registered(params: Params, x_example) -> dict[str, int]:
    """Each variant's registered seed ensemble, its alias pointed there; what the MLflow store lost
    is logged again from DVC's files."""
    files = {variant: {seed: replicate_model_path(variant, seed) for seed in params.train.seeds} for variant in params.variants}
    versions = tracking.find_registered_versions(files)
    for variant, version in versions.items():
        if version is not None:
            tracking.point_alias(variant, version)
            continue
        print(f"evaluate: {variant} is not in the MLflow registry with these models and serving code; registering it from models/{variant}/")
        with tracking.run(variant, {"dvc_stage": f"train@{variant}", "registered_by": "evaluate"}):
            versions[variant] = tracking.log_and_register_model(files[variant], variant, x_example)
    return versions


def finite(value):
    """A number for JSON: NaN becomes null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def tied_variants(table: pd.DataFrame) -> list[str]:
    return table[table["tied_with_champion"] == True]["variant"].tolist()  # noqa: E712 (NA-aware)


def summary_paragraph(table: pd.DataFrame, mcnemar: dict, seeds: list[int]) -> str:
    champion = table.iloc[0]
    name, k = champion["variant"], len(seeds)
    text = (
        f"**Champion: {name}**, the best mean validation accuracy over {k} seed{'s' * (k > 1)} "
        f"({champion['val_accuracy_mean']:.4f}). The test set reports, it never chooses: "
    )
    if k < 2:
        return text + (
            f"the champion's test accuracy is {champion['test_accuracy_mean']:.4f}. With one seed per variant there "
            "is no spread to measure: intervals, probabilities and tests are left empty, and one random draw decides. "
            "Train several seeds (`train.seeds`) to compare variants."
        )
    ties = tied_variants(table)
    gain = 100 * (champion["ensemble_test_accuracy"] - champion["test_accuracy_mean"])
    return text + (
        f"its mean test accuracy is {champion['test_accuracy_mean']:.4f}, 95% t-interval "
        f"[{champion['test_accuracy_ci_low']:.4f}, {champion['test_accuracy_ci_high']:.4f}]. "
        + (
            f"On validation accuracy it cannot be told apart from {', '.join(ties)} "
            if ties
            else "On validation accuracy it is significantly better than every other variant "
        )
        + f"(paired t-test by seed, Holm-corrected over {len(table) - 1} comparisons, {SIGNIFICANCE} level). "
        f"Its seed ensemble reaches {champion['ensemble_test_accuracy']:.4f} test accuracy, {gain:+.2f} points over "
        f"its mean replicate. Exact McNemar test on the test set, champion's ensemble against the runner-up's "
        f"({mcnemar['runner_up']}): {mcnemar['only_champion']} images only the champion gets right, "
        f"{mcnemar['only_runner_up']} only the runner-up, p = {mcnemar['p_value']:.3g} (reported, never used to choose). "
        "Every seed shares one validation split (test_size 0.175, random_state 0): split variance is not covered."
    )


def version_description(row: pd.Series, seeds: list[int], champion: str) -> str:
    """What the registry says of a variant's version: what it is, how well it did, how sure we are."""
    k = len(seeds)
    validation = f"{row['val_accuracy_mean']:.4f}"
    test = f"{row['test_accuracy_mean']:.4f}"
    if k > 1:
        validation += f" ± {row['val_accuracy_std']:.4f} (mean ± sd over seeds)"
        test += f", 95% t-interval [{row['test_accuracy_ci_low']:.4f}, {row['test_accuracy_ci_high']:.4f}]"
    if row["variant"] == champion:
        verdict = "Champion: the best mean validation accuracy."
    elif k > 1:
        verdict = f"Not the champion ({champion}; paired t-test on validation accuracy, Holm-corrected: p = {row['p_vs_champion']:.3g})."
    else:
        verdict = f"Not the champion ({champion})."
    return (
        f"{row['variant']}: the seed ensemble of {k} replicate{'s' * (k > 1)} (seeds {', '.join(map(str, seeds))}), "
        f"hidden layers {row['hidden_layers']}, {row['epochs']} epochs, {row['params']:,} parameters each. "
        f"Validation accuracy {validation}. Test accuracy {test}; this ensemble: {row['ensemble_test_accuracy']:.4f}. {verdict}"
    )


def write_reports(table: pd.DataFrame, replicates: pd.DataFrame, mcnemar: dict, seeds: list[int]) -> dict:
    """comparison.csv, .md, .png and metrics.json; the summary that metrics.json holds."""
    champion = table.iloc[0]
    with atomic_write(REPORTS_DIR / "comparison.csv", "w") as f:
        table[COLUMNS].to_csv(f, index=False, float_format="%.6g")
    with atomic_write(REPORTS_DIR / "comparison.md", "w") as f:
        f.write(summary_paragraph(table, mcnemar, seeds) + "\n\n")
        shown = table[COLUMNS].astype(object).where(table[COLUMNS].notna(), None)  # empty cells, not nan
        f.write(shown.to_markdown(index=False, floatfmt=MARKDOWN_FORMATS, missingval="") + "\n")
    chart = plots.comparison_chart(table, replicates, champion["variant"], tied_variants(table))
    plots.save_png(chart, REPORTS_DIR / "comparison.png")
    summary = {
        "champion": champion["variant"],
        "seeds": seeds,
        **{f"champion_{key}": finite(float(champion[key])) for key in CHAMPION_METRICS},
        "mcnemar_vs_runner_up": mcnemar,
        "test_accuracy_mean": dict(zip(table["variant"], table["test_accuracy_mean"].astype(float))),
        "ensemble_test_accuracy": dict(zip(table["variant"], table["ensemble_test_accuracy"].astype(float))),
    }
    with atomic_write(REPORTS_DIR / "metrics.json", "w") as f:
        json.dump(summary, f, indent=2, allow_nan=False)
    return summary


def evaluate(params: Params) -> str:
    seeds = params.train.seeds
    metrics = {variant: trained(variant, seeds) for variant in params.variants}  # every input checked first
    x_test, y_test = load_split(split_path("test", PROCESSED_DIR))
    scored = {variant: score_variant(variant, metrics[variant], x_test, y_test) for variant in params.variants}
    replicates = pd.concat(scores for scores, _, _ in scored.values())
    ensembles = {variant: accuracy for variant, (_, accuracy, _) in scored.items()}
    table = comparison_table(params, metrics, replicates, ensembles)
    name, runner_up = table["variant"][0], table["variant"][1] if len(table) > 1 else table["variant"][0]
    only_champion, only_runner_up, p_value = stats.mcnemar_exact(scored[name][2], scored[runner_up][2])
    mcnemar = {"runner_up": runner_up, "only_champion": only_champion, "only_runner_up": only_runner_up, "p_value": p_value}
    summary = write_reports(table, replicates, mcnemar, seeds)
    with atomic_write(EPOCHS_CSV, "w") as f:
        epoch_bands(list(params.variants), seeds).to_csv(f, index=False, float_format="%.6g")

    versions = ensure_registered(params, raw_pixels(x_test[:1]))
    with tracking.run("evaluate", {"dvc_stage": "evaluate", "champion": name}, experiment=tracking.EVALUATION_EXPERIMENT) as evaluation:
        reports = [REPORTS_DIR / f"comparison.{suffix}" for suffix in ("csv", "md", "png")]
        champion_metrics = {k: v for k, v in summary.items() if k.startswith("champion_") and v is not None}
        tracking.record_evaluation({**champion_metrics, "mcnemar_p_value": p_value}, table[COLUMNS], reports)
    rows = table.set_index("variant", drop=False)
    run_ids = tracking.record_comparison(
        {variant: {key: float(row[key]) for key in RUN_METRICS if pd.notna(row[key])} for variant, row in rows.iterrows()},
        {variant: version_description(row, seeds, name) for variant, row in rows.iterrows()},
        versions,
        name,
        evaluation.info.run_id,
    )
    tracking.set_champion(versions[name], name)

    print(table[COLUMNS].to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    print(f"evaluate: champion {name} (version {versions[name]}): models:/{tracking.REGISTERED_MODEL}@champion")
    links = tracking.ui_links([run_ids[variant] for variant in table["variant"]])
    print("evaluate: the comparison in the MLflow UI (`make ui` serves it here; docs/mlflow.md):")
    for what, link in links.items():
        print(f"  {what}: {link}")
    return name


def main() -> None:
    evaluate(load_params())


if __name__ == "__main__":
    stage.run("evaluate", main)
