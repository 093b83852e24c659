"""Stage `evaluate`: every replicate and every seed ensemble on the validation and the untouched
test split; the comparison with intervals and tests; the champion; where the variants differ.

The champion is chosen on validation, never on the test set (the first study picked its best model
on the test set): by default the variant whose seed ensemble, what `@champion` serves, has the best
validation accuracy (`champion.select`, docs/statistics.md). The test set only reports.
"""

from __future__ import annotations

import pandas as pd

from pipeline import analysis, registry, stage, stats, store, tracking, views
from pipeline.comparison import (
    COLUMNS,
    RUN_METRICS,
    comparison_paragraph,
    comparison_table,
    left_out,
    promoted_paragraph,
    promoted_table,
    version_description,
)
from pipeline.config import Params, load_params
from pipeline.data import load_split, raw_pixels
from pipeline.files import atomic_write
from pipeline.paths import DIFFERENCES_DIR, EPOCHS_CSV, PROCESSED_DIR, PROMOTED_CSV, REPORTS_DIR, replicate_model_path, split_path
from pipeline.reports import write_comparison, write_csv, write_differences, write_summaries
from pipeline.scoring import ensemble_of, epoch_bands, score_variant, trained


def evaluate(params: Params) -> str:
    store.check_store()
    seeds, rule = params.train.seeds, params.champion.select
    # The data: what every variant trained, checked before any work; the validation and test splits.
    metrics = {variant: trained(variant, seeds) for variant in params.variants}  # every input checked first
    splits = {}
    for split in ("validation", "test"):
        x, y = load_split(split_path(split, PROCESSED_DIR))
        splits[split] = (x, y.argmax(axis=1))
    labels = {split: y for split, (_, y) in splits.items()}

    # Every replicate scored; each variant's seed ensemble, what is served; the champion on validation.
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

    # The reports: the comparison, the summaries DVC compares, where the variants differ.
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

    # MLflow: each variant's ensemble (its replicates that finished with finite outputs) registered,
    # the comparison in a run of its own and on every variant's run, the view, @champion.
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

    # What the user reads at the end of `dvc repro`.
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
