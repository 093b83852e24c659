"""What evaluate writes under reports/: the comparison (CSV, Markdown, chart), metrics.json and
served.json, and where the variants differ (reports/differences/). Every file written atomically."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipeline import analysis, plots, registry
from pipeline.comparison import CHAMPION_METRICS, COLUMNS, MARKDOWN_FORMATS, finite, tied_variants
from pipeline.files import atomic_write
from pipeline.paths import DIFFERENCES_DIR, REPORTS_DIR, SERVED_JSON


MISTAKES_SHOWN = 24  # images in each picture of mistakes and disagreements


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

