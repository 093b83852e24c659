"""Stage `evaluate`: every replicate and every seed ensemble on the validation and the untouched
test split; the comparison with intervals and tests; the champion; where the variants differ.

The champion is chosen on validation, never on the test set (the first study picked its best model
on the test set): by default the variant whose seed ensemble, what `@champion` serves, has the best
validation accuracy (`champion.select`, docs/statistics.md). The test set only reports.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import keras
import numpy as np
import pandas as pd

from pipeline import analysis, plots, registry, stage, stats, store, tracking, views
from pipeline.config import Params, load_params
from pipeline.data import DataError, load_split, raw_pixels
from pipeline.ensemble import ensemble_probabilities
from pipeline.files import atomic_write
from pipeline.model import has_finite_weights, load_replicate, restore_hint
from pipeline.paths import (
    DIFFERENCES_DIR,
    EPOCHS_CSV,
    PROCESSED_DIR,
    PROMOTED_CSV,
    REPORTS_DIR,
    SERVED_JSON,
    replicate_history_path,
    replicate_model_path,
    split_path,
    train_reports_dir,
)

ENSEMBLE_COLUMNS = [
    "ensemble_val_accuracy",
    "ensemble_val_loss",
    "ensemble_test_accuracy",
    "ensemble_test_ci_low",
    "ensemble_test_ci_high",
    "ensemble_test_nll",
    "ensemble_test_ece",
]
COLUMNS = [
    "variant",
    "hidden_layers",
    "batch_norm",
    "dropout",
    "params",
    "epochs",
    "seeds",
    "failed_seeds",
    *ENSEMBLE_COLUMNS,
    "p_vs_champion",
    "tied_with_champion",
    "val_accuracy_mean",
    "val_accuracy_std",
    "test_accuracy_mean",
    "test_accuracy_std",
    "test_accuracy_ci_low",
    "test_accuracy_ci_high",
    "test_loss_mean",
    "prob_champion_better",
    "train_seconds",
]
# The champion's numbers in metrics.json: what its ensemble and its replicates did.
CHAMPION_METRICS = [
    "ensemble_val_accuracy", "ensemble_test_accuracy", "ensemble_test_ci_low", "ensemble_test_ci_high",
    "ensemble_test_nll", "ensemble_test_ece", "val_accuracy_mean", "test_accuracy_mean",
]
# What each variant's run and registered version get from the comparison.
RUN_METRICS = [
    *ENSEMBLE_COLUMNS, "test_accuracy_mean", "test_accuracy_ci_low", "test_accuracy_ci_high", "test_loss_mean",
    "prob_champion_better", "p_vs_champion",
]
MISTAKES_SHOWN = 24  # images in each picture of mistakes and disagreements
MARKDOWN_FORMATS = [
    {"dropout": ".1f", "train_seconds": ".1f", "prob_champion_better": ".2f", "p_vs_champion": ".3g"}.get(column, ".4f")
    for column in COLUMNS
]


def trained(variant: str, seeds: list[int]) -> dict:
    """The train stage's replicates.json, checked against the seeds params.yaml asks for and the files
    it promises: a history per seed, a model per finished (not diverged) replicate."""
    metrics_file = train_reports_dir(variant) / "replicates.json"
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


def scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Loss (categorical cross-entropy, as in training) and accuracy."""
    one_hot = np.eye(probabilities.shape[1], dtype=np.float32)[labels]
    loss = float(np.mean(keras.losses.categorical_crossentropy(one_hot, probabilities)))
    return loss, analysis.accuracy(probabilities, labels)


class Scored(NamedTuple):
    """A variant's finished replicates on the validation and test splits."""

    replicates: pd.DataFrame  # per finished replicate: seed, val_accuracy, test_loss, test_accuracy
    members: dict[str, list[np.ndarray]]  # per split, each usable member's class probabilities, in seed order
    left_out: dict[int, str]  # seed -> why it is not in the ensemble or the statistics


def score_variant(variant: str, metrics: dict, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Scored:
    """Per finished replicate its validation and test scores and class probabilities; the replicates
    left out, with why (diverged in training, non-finite weights or outputs)."""
    failures = {failure["seed"]: failure["reason"] for failure in metrics.get("diverged", [])}
    validation = {r["seed"]: r["val_accuracy"] for r in metrics["replicates"]}
    rows, members = [], {split: [] for split in splits}
    for seed in finished_seeds(metrics):  # the order the served ensemble averages in, to the last bit
        member = load_replicate(replicate_model_path(variant, seed), variant)
        if not has_finite_weights(member):
            failures[seed] = "non-finite weights in its model file"
            continue
        outputs = {split: member.predict_on_batch(x) for split, (x, _) in splits.items()}
        if not all(np.isfinite(output).all() for output in outputs.values()):
            failures[seed] = "non-finite outputs on the validation or test set"
            continue
        loss, accuracy = scores(outputs["test"], splits["test"][1])
        rows.append({"variant": variant, "seed": seed, "val_accuracy": validation[seed], "test_loss": loss, "test_accuracy": accuracy})
        for split, output in outputs.items():
            members[split].append(output)
    replicates = pd.DataFrame(rows, columns=["variant", "seed", "val_accuracy", "test_loss", "test_accuracy"])
    return Scored(replicates, members, dict(sorted(failures.items())))


class Ensemble(NamedTuple):
    """A variant's seed ensemble, what is served: its mean probabilities on each split."""

    validation: np.ndarray | None  # None when no replicate is left
    test: np.ndarray | None


def ensemble_of(score: Scored) -> Ensemble:
    if not score.members["test"]:
        return Ensemble(None, None)
    return Ensemble(*(ensemble_probabilities(score.members[split]) for split in ("validation", "test")))


def ensemble_columns(ensemble: Ensemble, labels: dict[str, np.ndarray]) -> dict[str, float]:
    """The ensemble's validation accuracy and loss; its test accuracy with a 95% Wilson interval over
    images, negative log-likelihood and calibration error (NaN without an ensemble)."""
    if ensemble.test is None:
        return dict.fromkeys(ENSEMBLE_COLUMNS, np.nan)
    val_loss, val_accuracy = scores(ensemble.validation, labels["validation"])
    correct = int(np.sum(ensemble.test.argmax(axis=1) == labels["test"]))
    low, high = stats.proportion_interval(correct, len(labels["test"]))
    described = analysis.describe(ensemble.test, labels["test"])
    return {
        "ensemble_val_accuracy": val_accuracy,
        "ensemble_val_loss": val_loss,
        "ensemble_test_accuracy": described["accuracy"],
        "ensemble_test_ci_low": low,
        "ensemble_test_ci_high": high,
        "ensemble_test_nll": described["nll"],
        "ensemble_test_ece": described["ece"],
    }


def comparison_table(
    params: Params,
    metrics_by_variant: dict[str, dict],
    replicates: pd.DataFrame,
    ensembles: dict[str, Ensemble],
    labels: dict[str, np.ndarray],
    failures: dict[str, dict[int, str]],
) -> pd.DataFrame:
    """One row per variant, the champion first, then by the same rule (params.champion.select), each
    compared with the champion on validation.

    `ensemble`: by the seed ensemble's validation accuracy; the ties by an exact McNemar test over
    validation images. `replicate_mean`: by the replicates' mean validation accuracy; the ties by a
    paired t-test over seeds. Holm-corrected either way. Replicate statistics come from the finished
    replicates; `failed_seeds` counts the others. A variant with none has empty statistics and comes last.
    """
    rows = []
    for variant, spec in params.variants.items():
        scores_of = replicates[replicates["variant"] == variant]
        metrics = metrics_by_variant[variant]
        low, high = stats.mean_interval(scores_of["test_accuracy"])
        val_low, val_high = stats.mean_interval(scores_of["val_accuracy"])
        rows.append(
            {
                "variant": variant,
                "hidden_layers": "-".join(map(str, spec.hidden_layers)),
                "batch_norm": spec.batch_norm,
                "dropout": spec.dropout,
                "params": metrics["params"],
                "epochs": metrics["epochs"],
                "seeds": len(scores_of),
                "failed_seeds": len(failures[variant]),
                **ensemble_columns(ensembles[variant], labels),
                "val_accuracy_mean": scores_of["val_accuracy"].mean(),
                "val_accuracy_std": scores_of["val_accuracy"].std(),
                "test_accuracy_mean": scores_of["test_accuracy"].mean(),
                "test_accuracy_std": scores_of["test_accuracy"].std(),
                "test_accuracy_ci_low": low,
                "test_accuracy_ci_high": high,
                "test_loss_mean": scores_of["test_loss"].mean(),
                "train_seconds": metrics["train_seconds"],
                "val_accuracy_ci_low": val_low,  # drawn in comparison.png, not a column of the table
                "val_accuracy_ci_high": val_high,
            }
        )
    rule = params.champion.select
    key = "ensemble_val_accuracy" if rule == "ensemble" else "val_accuracy_mean"
    # Best first; ties keep params.yaml's order; a variant with nothing left comes last.
    table = pd.DataFrame(rows).sort_values(key, ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    if table["seeds"][0] == 0:
        raise DataError("every replicate of every variant diverged: there is nothing to compare (see reports/train/*/replicates.json)")
    champion = table["variant"][0]
    others = table["variant"][1:]
    by_seed = replicates.pivot(index="seed", columns="variant", values="val_accuracy")
    best = by_seed[champion]
    table["prob_champion_better"] = [np.nan] + [
        stats.probability_better(best.dropna(), by_seed[v].dropna()) if v in by_seed else np.nan for v in others
    ]
    if rule == "ensemble":
        right = {v: ensembles[v].validation.argmax(axis=1) == labels["validation"] for v in table["variant"] if ensembles[v].validation is not None}
        raw = [stats.mcnemar_exact(right[champion], right[v])[2] if v in right else np.nan for v in others]
    else:
        pairs = [pd.concat([best, by_seed.get(v, pd.Series(dtype=float))], axis=1).dropna() for v in others]
        raw = [stats.paired_p_value(pair.iloc[:, 0], pair.iloc[:, 1]) for pair in pairs]
    table["p_vs_champion"] = [np.nan, *stats.holm(raw)]
    level = params.champion.significance
    table["tied_with_champion"] = [pd.NA] + [pd.NA if math.isnan(p) else bool(p >= level) for p in table["p_vs_champion"][1:]]
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


def comparison_paragraph(table: pd.DataFrame, mcnemar: dict, seeds: list[int], rule: str, level: float) -> str:
    champion = table.iloc[0]
    name, k = champion["variant"], len(seeds)
    tested = int(table["p_vs_champion"].notna().sum())  # variants that could be tested
    ties = tied_variants(table)
    if rule == "ensemble":
        text = (
            f"**Champion: {name}**, whose seed ensemble of {k} replicate{'s' * (k > 1)} (what `@champion` serves) has the "
            f"best validation accuracy, {champion['ensemble_val_accuracy']:.4f}. "
        )
        test_used = f"exact McNemar test over the {'validation'} images, Holm-corrected over {tested} comparisons, {level} level"
    else:
        text = (
            f"**Champion: {name}**, the best mean validation accuracy of single replicates over {k} seed{'s' * (k > 1)} "
            f"({champion['val_accuracy_mean']:.4f}; `champion.select: replicate_mean`). "
        )
        test_used = f"paired t-test by seed, Holm-corrected over {tested} comparisons, {level} level"
    if rule == "replicate_mean" and k < 2:
        return text + (
            f"Its test accuracy is {champion['test_accuracy_mean']:.4f}. With one seed per variant there is no spread "
            "to measure: intervals, probabilities and tests are left empty, and one random draw decides. Train several "
            "seeds (`train.seeds`) to compare variants."
        )
    if ties:
        verdict = f"On validation it cannot be told apart from {', '.join(ties)} ({test_used}). "
    elif tested == len(table) - 1:
        verdict = f"On validation it is significantly better than every other variant ({test_used}). "
    else:
        verdict = f"On validation it is significantly better than every other variant that could be tested ({test_used}). "
    served = (
        f"The test set reports, it never chooses: the served ensemble's test accuracy is {champion['ensemble_test_accuracy']:.4f}, "
        f"95% Wilson interval over images [{champion['ensemble_test_ci_low']:.4f}, {champion['ensemble_test_ci_high']:.4f}]"
    )
    if k > 1:
        gain = 100 * (champion["ensemble_test_accuracy"] - champion["test_accuracy_mean"])
        served += (
            f"; its single replicates average {champion['test_accuracy_mean']:.4f}, 95% t-interval over seeds "
            f"[{champion['test_accuracy_ci_low']:.4f}, {champion['test_accuracy_ci_high']:.4f}] (the ensemble: {gain:+.2f} points)"
        )
    mcnemar_sentence = (
        f" Exact McNemar test on the test set, the champion's ensemble against the runner-up's ({mcnemar['runner_up']}): "
        f"{mcnemar['only_champion']} images only the champion gets right, {mcnemar['only_runner_up']} only the runner-up, "
        f"p = {mcnemar['p_value']:.3g} (reported, never used to choose)."
        if mcnemar["runner_up"] != name
        else ""
    )
    return (
        text + verdict + served + "." + mcnemar_sentence
        + " Every seed shares one validation split (test_size 0.175, random_state 0): split variance is not covered."
    )


def version_description(row: pd.Series, seeds: list[int], champion: str, rule: str) -> str:
    """What the registry says of a variant's version: what it is, how well it did, how sure we are."""
    k = len(seeds)
    validation = f"{row['val_accuracy_mean']:.4f}"
    test = f"{row['test_accuracy_mean']:.4f}"
    if k > 1:
        validation += f" ± {row['val_accuracy_std']:.4f} (mean ± sd over seeds)"
        test += f", 95% t-interval [{row['test_accuracy_ci_low']:.4f}, {row['test_accuracy_ci_high']:.4f}]"
    chosen_by = "the best validation accuracy of its seed ensemble" if rule == "ensemble" else "the best mean validation accuracy of its replicates"
    if row["variant"] == champion:
        verdict = f"Champion: {chosen_by}."
    elif not math.isnan(row["p_vs_champion"]):
        verdict = f"Not the champion ({champion}; {'tied with it' if row['tied_with_champion'] is True else 'worse'} on validation, Holm-corrected p = {row['p_vs_champion']:.3g})."
    else:
        verdict = f"Not the champion ({champion})."
    return (
        f"{row['variant']}: the seed ensemble of {k} replicate{'s' * (k > 1)} (seeds {', '.join(map(str, seeds))}), "
        f"hidden layers {row['hidden_layers']}, {row['epochs']} epochs, {row['params']:,} parameters each. This ensemble: "
        f"validation accuracy {row['ensemble_val_accuracy']:.4f}, test accuracy {row['ensemble_test_accuracy']:.4f} "
        f"(95% Wilson interval [{row['ensemble_test_ci_low']:.4f}, {row['ensemble_test_ci_high']:.4f}]). Single replicates: "
        f"validation accuracy {validation}, test accuracy {test}. {verdict}"
    )


PROMOTED_COLUMNS = [
    "variant", "study", "trial", "search_seeds", "search_val_accuracy", "val_accuracy_mean", "val_accuracy_ci_low",
    "val_accuracy_ci_high", "overstatement", "ensemble_val_accuracy", "ensemble_test_accuracy", "rank",
]


def promoted_table(params: Params, table: pd.DataFrame) -> pd.DataFrame:
    """Each promoted variant's score in the search (the mean of the search's seeds) beside its
    confirmed one (the mean over train.seeds, fresh draws, with its 95% t-interval): the search's
    overstatement of it, in accuracy (positive: the search promised more than it delivers)."""
    rows = []
    by_variant = table.set_index("variant")
    for variant, origin in params.promoted.items():
        confirmed = by_variant.loc[variant]
        rows.append(
            {
                "variant": variant,
                "study": origin.study,
                "trial": origin.trial,
                "search_seeds": " ".join(map(str, origin.seeds)),
                "search_val_accuracy": origin.val_accuracy,
                "val_accuracy_mean": confirmed["val_accuracy_mean"],
                "val_accuracy_ci_low": confirmed["val_accuracy_ci_low"],
                "val_accuracy_ci_high": confirmed["val_accuracy_ci_high"],
                "overstatement": origin.val_accuracy - confirmed["val_accuracy_mean"],
                "ensemble_val_accuracy": confirmed["ensemble_val_accuracy"],
                "ensemble_test_accuracy": confirmed["ensemble_test_accuracy"],
                "rank": int(table.index[table["variant"] == variant][0]) + 1,
            }
        )
    return pd.DataFrame(rows, columns=PROMOTED_COLUMNS)


def promoted_paragraph(promoted: pd.DataFrame, seeds: list[int], count: int) -> str:
    """What the search promised for each promoted design, and what the confirmation found."""
    if promoted.empty:
        return ""
    lines = [
        "## Promoted from the search",
        "",
        f"Each design's score in the search is the mean validation accuracy of its trial's seeds, the best of the "
        f"trials the search ran; confirmed is the mean over seeds {', '.join(map(str, seeds))}, which the search never "
        "saw, with its 95% t-interval over seeds. Overstatement: the search's score minus the confirmed mean.",
        "",
    ]
    shown = promoted.assign(
        overstatement=[f"{value * 100:+.2f} points" for value in promoted["overstatement"]],
        rank=[f"{rank} of {count}" for rank in promoted["rank"]],
    )
    lines.append(shown.to_markdown(index=False, floatfmt=".4f"))
    return "\n".join(lines) + "\n"


def write_csv(frame: pd.DataFrame, path) -> None:
    with atomic_write(path, "w") as f:
        frame.to_csv(f, index=False, float_format="%.6g")


def write_comparison(table: pd.DataFrame, replicates: pd.DataFrame, paragraph: str, rule: str, promoted: str = "") -> None:
    """comparison.csv, .md and .png."""
    write_csv(table[COLUMNS], REPORTS_DIR / "comparison.csv")
    with atomic_write(REPORTS_DIR / "comparison.md", "w") as f:
        f.write(paragraph + "\n\n")
        shown = table[COLUMNS].astype(object).where(table[COLUMNS].notna(), None)  # empty cells, not nan
        f.write(shown.to_markdown(index=False, floatfmt=MARKDOWN_FORMATS, missingval="") + "\n")
        if promoted:
            f.write("\n" + promoted)
    chart = plots.comparison_chart(table, replicates, table["variant"][0], tied_variants(table), rule)
    plots.save_png(chart, REPORTS_DIR / "comparison.png")


def write_summaries(table: pd.DataFrame, replicates: pd.DataFrame, mcnemar: dict, rule: str, failures: dict[str, dict[int, str]]) -> dict:
    """metrics.json, the few flat numbers DVC compares (`dvc exp show`, `dvc metrics diff`), and
    served.json, what register serves: the champion and each variant's ensemble. Null, never NaN."""
    champion = table.iloc[0]
    summary = {
        "champion": champion["variant"],
        "select": rule,
        **{f"champion_{key}": finite(float(champion[key])) for key in CHAMPION_METRICS},
        "runner_up": mcnemar["runner_up"],
        "tied_with_champion": len(tied_variants(table)),
    }
    with atomic_write(REPORTS_DIR / "metrics.json", "w") as f:
        json.dump(summary, f, indent=2, allow_nan=False)
    served = {
        "champion": champion["variant"],
        # None on the main line; a DVC experiment's results never move the main line's aliases (register).
        "experiment": registry.dvc_experiment(),
        "ensembles": {variant: sorted(map(int, replicates[replicates["variant"] == variant]["seed"])) for variant in table["variant"]},
        "failed_replicates": {variant: [{"seed": seed, "reason": reason} for seed, reason in by_seed.items()] for variant, by_seed in failures.items() if by_seed},
    }
    with atomic_write(SERVED_JSON, "w") as f:
        json.dump(served, f, indent=2, allow_nan=False)
    return summary


def write_differences(scored, ensembles, labels, champion: str, runner_up: str, images: np.ndarray) -> None:
    """reports/differences/: per-class, calibration and confused-pair tables; the champion's and the
    runner-up's confusion data (actual, predicted) for DVC's confusion template; the reliability
    diagram, the champion's most confident mistakes, the images on which the two disagree."""
    members = {variant: score.members["test"] for variant, score in scored.items()}
    served = {variant: ensemble.test for variant, ensemble in ensembles.items()}
    for name, frame in analysis.where_they_differ(members, served, labels["test"]).items():
        write_csv(frame, DIFFERENCES_DIR / f"{name}.csv")
    test = {name: ensembles[name].test for name in dict.fromkeys([champion, runner_up])}
    for role, name in (("champion", champion), ("runner_up", runner_up)):
        write_csv(pd.DataFrame({"actual": labels["test"], "predicted": test[name].argmax(axis=1)}), DIFFERENCES_DIR / f"confusion_{role}.csv")
    tables = {name: analysis.reliability_table(probabilities, labels["test"]) for name, probabilities in test.items()}
    eces = {name: analysis.expected_calibration_error(probabilities, labels["test"]) for name, probabilities in test.items()}
    plots.save_png(plots.reliability_diagram(tables, eces), DIFFERENCES_DIR / "reliability.png")
    best = test[champion]
    wrong = np.flatnonzero(best.argmax(axis=1) != labels["test"])
    wrong = wrong[np.argsort(-best[wrong].max(axis=1), kind="stable")][:MISTAKES_SHOWN]
    captions = [f"true {labels['test'][i]}, said {best[i].argmax()} ({best[i].max():.3f})" for i in wrong]
    plots.save_png(plots.image_grid(images[wrong], captions, f"{champion}: its most confident test mistakes (true, predicted, probability)"),
                   DIFFERENCES_DIR / "mistakes.png")
    other = test[runner_up]
    disagree = np.flatnonzero(best.argmax(axis=1) != other.argmax(axis=1))[:MISTAKES_SHOWN]
    captions = [f"true {labels['test'][i]}: {best[i].argmax()} vs {other[i].argmax()}" for i in disagree]
    title = f"Test images on which {champion} (first) and {runner_up} (second) disagree: {int(np.sum(best.argmax(axis=1) != other.argmax(axis=1)))} in all"
    plots.save_png(plots.image_grid(images[disagree], captions, title), DIFFERENCES_DIR / "disagreements.png")


def evaluate(params: Params) -> str:
    store.check_store()
    seeds, rule = params.train.seeds, params.champion.select
    metrics = {variant: trained(variant, seeds) for variant in params.variants}  # every input checked first
    splits = {}
    for split in ("validation", "test"):
        x, y = load_split(split_path(split, PROCESSED_DIR))
        splits[split] = (x, y.argmax(axis=1))
    labels = {split: y for split, (_, y) in splits.items()}
    scored = {variant: score_variant(variant, metrics[variant], splits) for variant in params.variants}
    replicates = pd.concat(score.replicates for score in scored.values())
    ensembles = {variant: ensemble_of(score) for variant, score in scored.items()}
    failures = {variant: score.left_out for variant, score in scored.items()}
    table = comparison_table(params, metrics, replicates, ensembles, labels, failures)
    compared = table[table["seeds"] > 0]["variant"].tolist()
    name, runner_up = compared[0], compared[1] if len(compared) > 1 else compared[0]
    correct = {v: ensembles[v].test.argmax(axis=1) == labels["test"] for v in (name, runner_up)}
    only_champion, only_runner_up, p_value = stats.mcnemar_exact(correct[name], correct[runner_up])
    mcnemar = {"runner_up": runner_up, "only_champion": only_champion, "only_runner_up": only_runner_up, "p_value": p_value}
    paragraph = comparison_paragraph(table, mcnemar, seeds, rule, params.champion.significance) + left_out(failures)
    promoted = promoted_table(params, table)
    write_csv(promoted, PROMOTED_CSV)
    write_comparison(table, replicates, paragraph, rule, promoted_paragraph(promoted, seeds, len(table)))
    summary = write_summaries(table, replicates, mcnemar, rule, failures)
    write_csv(analysis.ensemble_size_table({variant: score.members for variant, score in scored.items()}, labels), REPORTS_DIR / "ensemble_size.csv")
    images = raw_pixels(splits["test"][0])
    write_differences(scored, ensembles, labels, name, runner_up, images)
    with atomic_write(EPOCHS_CSV, "w") as f:
        epoch_bands(metrics).to_csv(f, index=False, float_format="%.6g")

    # The ensemble of each variant's replicates that finished with finite outputs.
    files = {variant: {seed: replicate_model_path(variant, seed) for seed in score.replicates["seed"]} for variant, score in scored.items()}
    experiment = registry.dvc_experiment()
    versions, _ = registry.ensure_registered(files, images[:1], "evaluate", experiment)
    with tracking.run("evaluate", {"dvc_stage": "evaluate", "champion": name}, experiment=tracking.EVALUATION_EXPERIMENT) as evaluation:
        reports = [REPORTS_DIR / f"comparison.{suffix}" for suffix in ("csv", "md", "png")]
        reports += [DIFFERENCES_DIR / name for name in ("per_class.csv", "calibration.csv", "confused_pairs.csv", "reliability.png", "mistakes.png", "disagreements.png")]
        champion_metrics = {k: v for k, v in summary.items() if k.startswith("champion_") and v is not None}
        tracking.record_evaluation({**champion_metrics, "mcnemar_p_value": p_value}, table[COLUMNS], reports)
    rows = table.set_index("variant", drop=False).loc[list(versions)]
    runs = registry.version_runs(versions)
    tracking.record_results(
        {variant: {key: float(row[key]) for key in RUN_METRICS if pd.notna(row[key])} for variant, row in rows.iterrows()},
        runs, name, evaluation.info.run_id, retag_former_champions=experiment is None,
    )
    for variant, (run_id, _) in runs.items():  # MLflow's own classifier evaluation of what is served
        tracking.log_classifier_evaluation(run_id, labels["test"], ensembles[variant].test.argmax(axis=1))
    registry.describe_versions({variant: version_description(row, sorted(files[variant]), name, rule) for variant, row in rows.iterrows()}, versions)
    views.save_comparison_view(evaluation.info.run_id)
    alias = registry.set_champion(versions[name], name, experiment)

    print(table[COLUMNS].to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    if any(failures.values()):
        print(f"evaluate:{left_out(failures)}")
    print(f"evaluate: champion {name} (version {versions[name]}): models:/{registry.REGISTERED_MODEL}@{alias}")
    if experiment:
        print(f"evaluate: experiment {experiment}: @champion and the variants' aliases stay the main line's ({registry.RETURN_TO_MAIN_LINE})")
    links = views.ui_links()
    print("evaluate: the comparison in the MLflow UI (`make ui` serves it here; docs/mlflow.md):")
    for what, link in links.items():
        print(f"  {what}: {link}")
    return name


def main() -> None:
    evaluate(load_params())


if __name__ == "__main__":
    stage.run("evaluate", main)
