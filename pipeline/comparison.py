"""The comparison of the variants: one row per variant, the champion first, chosen on validation
by params.champion.select, the others tested against it (Holm-corrected); the words that say it
(comparison.md's paragraph, each registered version's description) and the promoted designs'
search scores beside their confirmed ones."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline import analysis, stats
from pipeline.config import Params
from pipeline.data import SERVED_IMAGE, DataError
from pipeline.scoring import Ensemble, scores


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


MARKDOWN_FORMATS = [
    {"dropout": ".1f", "train_seconds": ".1f", "prob_champion_better": ".2f", "p_vs_champion": ".3g"}.get(column, ".4f")
    for column in COLUMNS
]


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
        f"validation accuracy {validation}, test accuracy {test}. {verdict} Input: rows of {SERVED_IMAGE}; output: "
        "`digit` and the ten class `probabilities` (every accepted form: the registered model's description)."
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

