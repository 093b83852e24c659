"""Stage `evaluate`: every replicate and every seed ensemble on the untouched test set; the
comparison with intervals and tests; the champion.

The champion is the variant with the best *mean validation* accuracy over its seeds: the test
set only reports, it never chooses (the first study picked its best model on the test set).
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import keras
import numpy as np
import pandas as pd

from pipeline import plots, stage, stats, tracking
from pipeline.config import Params, load_params
from pipeline.data import DataError, load_split, raw_pixels
from pipeline.ensemble import ensemble_probabilities
from pipeline.files import atomic_write
from pipeline.model import has_finite_weights, load_replicate, restore_hint
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
    "failed_seeds",
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
    """The train stage's metrics.json, checked against the seeds params.yaml asks for and the files
    it promises: a history per seed, a model per finished (not diverged) replicate."""
    metrics_file = train_reports_dir(variant) / "metrics.json"
    remedy = restore_hint(variant)
    try:
        metrics = json.loads(metrics_file.read_text())
        finished = [replicate["seed"] for replicate in metrics["replicates"]]
    except FileNotFoundError:
        raise DataError(f"{variant} has no trained {metrics_file}: run `dvc repro train@{variant}`") from None
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{metrics_file} is not what train@{variant} writes ({type(error).__name__}): {remedy}") from None
    if metrics["seeds"] != seeds:
        raise DataError(f"{variant} was trained with seeds {metrics['seeds']}, params say {seeds}: run `dvc repro`")
    files = [replicate_history_path(variant, seed) for seed in seeds] + [replicate_model_path(variant, seed) for seed in finished]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise DataError(f"{variant}: {', '.join(missing)} missing: {remedy}")
    return metrics


def finished_seeds(metrics: dict) -> list[int]:
    """The seeds whose replicates finished training (the others diverged), in seed order."""
    return sorted(replicate["seed"] for replicate in metrics["replicates"])


def epoch_bands(metrics_by_variant: dict[str, dict]) -> pd.DataFrame:
    """Per variant and epoch, each metric's mean over its finished replicates and a band of one
    standard deviation (`val_accuracy`, `val_accuracy_low`, `val_accuracy_high`; for one seed the
    band is the mean): what dvc.yaml's charts overlay."""
    frames = []
    for variant, metrics in metrics_by_variant.items():
        if not (seeds := finished_seeds(metrics)):
            continue
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


class Scored(NamedTuple):
    """A variant on the test set."""

    replicates: pd.DataFrame  # per finished replicate: seed, val_accuracy, test_loss, test_accuracy
    ensemble_accuracy: float  # NaN when no replicate is left
    ensemble_correct: np.ndarray | None  # per test image, whether the ensemble got it right
    left_out: dict[int, str]  # seed -> why it is not in the ensemble or the statistics


def score_variant(variant: str, metrics: dict, x_test, y_test) -> Scored:
    """Per finished replicate its validation and test scores; the ensemble's test accuracy and right
    answers; the replicates left out, with why (diverged in training, non-finite weights or test outputs)."""
    failures = {failure["seed"]: failure["reason"] for failure in metrics.get("diverged", [])}
    validation = {r["seed"]: r["val_accuracy"] for r in metrics["replicates"]}
    rows, probabilities = [], []
    for seed in finished_seeds(metrics):  # the order the served ensemble averages in, to the last bit
        member = load_replicate(replicate_model_path(variant, seed), variant)
        if not has_finite_weights(member):
            failures[seed] = "non-finite weights in its model file"
            continue
        member_probabilities = member.predict_on_batch(x_test)
        if not np.isfinite(member_probabilities).all():
            failures[seed] = "non-finite outputs on the test set"
            continue
        loss, accuracy, _ = scores_on_test(member_probabilities, y_test)
        rows.append({"variant": variant, "seed": seed, "val_accuracy": validation[seed], "test_loss": loss, "test_accuracy": accuracy})
        probabilities.append(member_probabilities)
    scores = pd.DataFrame(rows, columns=["variant", "seed", "val_accuracy", "test_loss", "test_accuracy"])
    if not probabilities:
        return Scored(scores, np.nan, None, dict(sorted(failures.items())))
    _, ensemble_accuracy, ensemble_correct = scores_on_test(ensemble_probabilities(probabilities), y_test)
    return Scored(scores, ensemble_accuracy, ensemble_correct, dict(sorted(failures.items())))


def comparison_table(
    params: Params,
    metrics_by_variant: dict[str, dict],
    replicates: pd.DataFrame,
    ensembles: dict[str, float],
    failures: dict[str, dict[int, str]],
) -> pd.DataFrame:
    """One row per variant, best mean validation accuracy first, compared with the champion.

    Its statistics come from the finished replicates; `failed_seeds` counts the others. A variant
    with none has empty statistics and comes last; the tests pair the seeds both variants finished.
    """
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
                "failed_seeds": len(failures[variant]),
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
    if table["seeds"][0] == 0:
        raise DataError("every replicate of every variant diverged: there is nothing to compare (see reports/train/*/metrics.json)")
    by_seed = replicates.pivot(index="seed", columns="variant", values="val_accuracy")
    champion = by_seed[table["variant"][0]] if len(by_seed) else pd.Series(dtype=float)
    pairs = [pd.concat([champion, by_seed.get(v, pd.Series(dtype=float))], axis=1).dropna() for v in table["variant"][1:]]
    table["prob_champion_better"] = [np.nan] + [
        stats.probability_better(champion.dropna(), by_seed[v].dropna()) if v in by_seed else np.nan for v in table["variant"][1:]
    ]
    table["p_vs_champion"] = [np.nan, *stats.holm([stats.paired_p_value(pair.iloc[:, 0], pair.iloc[:, 1]) for pair in pairs])]
    table["tied_with_champion"] = [pd.NA] + [pd.NA if math.isnan(p) else bool(p >= SIGNIFICANCE) for p in table["p_vs_champion"][1:]]
    return table


def finite(value):
    """A number for JSON: NaN becomes null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def left_out(failures: dict[str, dict[int, str]]) -> str:
    """The sentence that says which replicates the statistics leave out, and why ("" if none)."""
    named = [f"{variant} seed {seed} ({reason})" for variant, by_seed in failures.items() for seed, reason in by_seed.items()]
    if not named:
        return ""
    return (
        f" Left out of every statistic, ensemble and test: {'; '.join(named)}. The statistics of those variants come "
        "from their other replicates, and the paired tests from the seeds both variants finished; a variant with "
        "none left has no statistics and cannot be champion."
    )


def tied_variants(table: pd.DataFrame) -> list[str]:
    return table[table["tied_with_champion"] == True]["variant"].tolist()  # noqa: E712 (NA-aware)


def summary_paragraph(table: pd.DataFrame, mcnemar: dict, seeds: list[int], failures: dict[str, dict[int, str]]) -> str:
    return comparison_paragraph(table, mcnemar, seeds) + left_out(failures)


def comparison_paragraph(table: pd.DataFrame, mcnemar: dict, seeds: list[int]) -> str:
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
    tested = int(table["p_vs_champion"].notna().sum())  # variants with too few replicates left have no test
    gain = 100 * (champion["ensemble_test_accuracy"] - champion["test_accuracy_mean"])
    if ties:
        verdict = f"On validation accuracy it cannot be told apart from {', '.join(ties)} "
    elif tested == len(table) - 1:
        verdict = "On validation accuracy it is significantly better than every other variant "
    else:
        verdict = f"On validation accuracy it is significantly better than every other variant that could be tested ({tested}) "
    mcnemar_sentence = (
        f"Exact McNemar test on the test set, champion's ensemble against the runner-up's "
        f"({mcnemar['runner_up']}): {mcnemar['only_champion']} images only the champion gets right, "
        f"{mcnemar['only_runner_up']} only the runner-up, p = {mcnemar['p_value']:.3g} (reported, never used to choose). "
        if mcnemar["runner_up"] != champion["variant"]
        else ""
    )
    return text + (
        f"its mean test accuracy is {champion['test_accuracy_mean']:.4f}, 95% t-interval "
        f"[{champion['test_accuracy_ci_low']:.4f}, {champion['test_accuracy_ci_high']:.4f}]. "
        + verdict
        + f"(paired t-test by seed, Holm-corrected over {tested} comparisons, {SIGNIFICANCE} level). "
        f"Its seed ensemble reaches {champion['ensemble_test_accuracy']:.4f} test accuracy, {gain:+.2f} points over "
        f"its mean replicate. "
        + mcnemar_sentence
        + "Every seed shares one validation split (test_size 0.175, random_state 0): split variance is not covered."
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


def write_reports(table: pd.DataFrame, replicates: pd.DataFrame, mcnemar: dict, seeds: list[int], failures: dict[str, dict[int, str]]) -> dict:
    """comparison.csv, .md, .png and metrics.json; the summary that metrics.json holds (null, never
    NaN, where a statistic cannot be had)."""
    champion = table.iloc[0]
    with atomic_write(REPORTS_DIR / "comparison.csv", "w") as f:
        table[COLUMNS].to_csv(f, index=False, float_format="%.6g")
    with atomic_write(REPORTS_DIR / "comparison.md", "w") as f:
        f.write(summary_paragraph(table, mcnemar, seeds, failures) + "\n\n")
        shown = table[COLUMNS].astype(object).where(table[COLUMNS].notna(), None)  # empty cells, not nan
        f.write(shown.to_markdown(index=False, floatfmt=MARKDOWN_FORMATS, missingval="") + "\n")
    chart = plots.comparison_chart(table, replicates, champion["variant"], tied_variants(table))
    plots.save_png(chart, REPORTS_DIR / "comparison.png")
    summary = {
        "champion": champion["variant"],
        "seeds": seeds,
        **{f"champion_{key}": finite(float(champion[key])) for key in CHAMPION_METRICS},
        "mcnemar_vs_runner_up": mcnemar,
        "test_accuracy_mean": {v: finite(float(a)) for v, a in zip(table["variant"], table["test_accuracy_mean"])},
        "ensemble_test_accuracy": {v: finite(float(a)) for v, a in zip(table["variant"], table["ensemble_test_accuracy"])},
        "ensembles": {variant: sorted(map(int, replicates[replicates["variant"] == variant]["seed"])) for variant in table["variant"]},
        "failed_replicates": {variant: [{"seed": seed, "reason": reason} for seed, reason in by_seed.items()] for variant, by_seed in failures.items() if by_seed},
    }
    with atomic_write(REPORTS_DIR / "metrics.json", "w") as f:
        json.dump(summary, f, indent=2, allow_nan=False)
    return summary


def evaluate(params: Params) -> str:
    tracking.check_store()
    seeds = params.train.seeds
    metrics = {variant: trained(variant, seeds) for variant in params.variants}  # every input checked first
    x_test, y_test = load_split(split_path("test", PROCESSED_DIR))
    scored = {variant: score_variant(variant, metrics[variant], x_test, y_test) for variant in params.variants}
    replicates = pd.concat(score.replicates for score in scored.values())
    ensembles = {variant: score.ensemble_accuracy for variant, score in scored.items()}
    failures = {variant: score.left_out for variant, score in scored.items()}
    table = comparison_table(params, metrics, replicates, ensembles, failures)
    compared = table[table["seeds"] > 0]["variant"].tolist()
    name, runner_up = compared[0], compared[1] if len(compared) > 1 else compared[0]
    only_champion, only_runner_up, p_value = stats.mcnemar_exact(scored[name].ensemble_correct, scored[runner_up].ensemble_correct)
    mcnemar = {"runner_up": runner_up, "only_champion": only_champion, "only_runner_up": only_runner_up, "p_value": p_value}
    summary = write_reports(table, replicates, mcnemar, seeds, failures)
    with atomic_write(EPOCHS_CSV, "w") as f:
        epoch_bands(metrics).to_csv(f, index=False, float_format="%.6g")

    # The ensemble of each variant's replicates that finished with finite test outputs.
    files = {variant: {seed: replicate_model_path(variant, seed) for seed in score.replicates["seed"]} for variant, score in scored.items()}
    versions, _ = tracking.ensure_registered(files, raw_pixels(x_test[:1]), "evaluate")
    with tracking.run("evaluate", {"dvc_stage": "evaluate", "champion": name}, experiment=tracking.EVALUATION_EXPERIMENT) as evaluation:
        reports = [REPORTS_DIR / f"comparison.{suffix}" for suffix in ("csv", "md", "png")]
        champion_metrics = {k: v for k, v in summary.items() if k.startswith("champion_") and v is not None}
        tracking.record_evaluation({**champion_metrics, "mcnemar_p_value": p_value}, table[COLUMNS], reports)
    rows = table.set_index("variant", drop=False).loc[list(versions)]
    run_ids = tracking.record_comparison(
        {variant: {key: float(row[key]) for key in RUN_METRICS if pd.notna(row[key])} for variant, row in rows.iterrows()},
        {variant: version_description(row, sorted(files[variant]), name) for variant, row in rows.iterrows()},
        versions,
        name,
        evaluation.info.run_id,
    )
    tracking.set_champion(versions[name], name)

    print(table[COLUMNS].to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    if any(failures.values()):
        print(f"evaluate:{left_out(failures)}")
    print(f"evaluate: champion {name} (version {versions[name]}): models:/{tracking.REGISTERED_MODEL}@champion")
    links = tracking.ui_links([run_ids[variant] for variant in table["variant"] if variant in run_ids])
    print("evaluate: the comparison in the MLflow UI (`make ui` serves it here; docs/mlflow.md):")
    for what, link in links.items():
        print(f"  {what}: {link}")
    return name


def main() -> None:
    evaluate(load_params())


if __name__ == "__main__":
    stage.run("evaluate", main)
