"""Stage `evaluate`: every variant on the untouched test set; the table; the champion.

The champion is the variant with the best *validation* accuracy: the test set only reports,
it never chooses (the first study picked its best model on the test set).
"""

from __future__ import annotations

import json

import keras
import pandas as pd

from pipeline import plots, stage, tracking
from pipeline.config import Params, load_params
from pipeline.data import DataError, load_split, raw_pixels
from pipeline.files import atomic_write
from pipeline.paths import PROCESSED_DIR, REPORTS_DIR, model_path, split_path, train_reports_dir

COLUMNS = [
    "variant",
    "hidden_layers",
    "batch_norm",
    "dropout",
    "params",
    "epochs",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "train_seconds",
]


def comparison_table(params: Params, x_test, y_test) -> pd.DataFrame:
    rows = []
    for variant, spec in params.variants.items():
        model_file, metrics_file = model_path(variant), train_reports_dir(variant) / "metrics.json"
        if not model_file.is_file() or not metrics_file.is_file():
            raise DataError(f"{variant} has no trained model or metrics: run `dvc repro train@{variant}`")
        trained = json.loads(metrics_file.read_text())
        model = keras.saving.load_model(model_file)
        test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=1024, verbose=0)
        rows.append(
            {
                "variant": variant,
                "hidden_layers": "-".join(map(str, spec.hidden_layers)),
                "batch_norm": spec.batch_norm,
                "dropout": spec.dropout,
                "params": trained["params"],
                "epochs": trained["epochs"],
                "val_accuracy": trained["val_accuracy"],
                "test_loss": test_loss,
                "test_accuracy": test_accuracy,
                "train_seconds": trained["train_seconds"],
            }
        )
    # Best validation accuracy first; ties keep params.yaml's order.
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("val_accuracy", ascending=False, kind="stable")


def ensure_registered(params: Params, x_example) -> dict[str, int]:
    """Each variant's registered version, its alias pointed there; what the MLflow store lost is
    logged again from DVC's files."""
    versions = tracking.find_registered_versions({variant: model_path(variant) for variant in params.variants})
    for variant, version in versions.items():
        if version is not None:
            tracking.point_alias(variant, version)
            continue
        print(
            f"evaluate: {variant} is not in the MLflow registry with this model and serving code; "
            f"registering it from {model_path(variant)}"
        )
        with tracking.run(variant, {"dvc_stage": f"train@{variant}", "registered_by": "evaluate"}):
            versions[variant] = tracking.log_and_register_model(model_path(variant), variant, x_example)
    return versions


def write_reports(table: pd.DataFrame, champion: pd.Series) -> dict:
    """comparison.csv, .md, .png and metrics.json; the summary that metrics.json holds."""
    name = champion["variant"]
    with atomic_write(REPORTS_DIR / "comparison.csv", "w") as f:
        table.to_csv(f, index=False, float_format="%.4f")
    with atomic_write(REPORTS_DIR / "comparison.md", "w") as f:
        f.write(f"Champion (best validation accuracy): **{name}**\n\n")
        formats = [".1f" if column in ("dropout", "train_seconds") else ".4f" for column in COLUMNS]
        f.write(table.to_markdown(index=False, floatfmt=formats) + "\n")
    plots.save_png(plots.comparison_chart(table, name), REPORTS_DIR / "comparison.png")
    summary = {
        "champion": name,
        "champion_val_accuracy": float(champion["val_accuracy"]),
        "champion_test_accuracy": float(champion["test_accuracy"]),
        "champion_test_loss": float(champion["test_loss"]),
        "test_accuracy": dict(zip(table["variant"], table["test_accuracy"].astype(float))),
    }
    with atomic_write(REPORTS_DIR / "metrics.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def evaluate(params: Params) -> str:
    x_test, y_test = load_split(split_path("test", PROCESSED_DIR))
    table = comparison_table(params, x_test, y_test)
    champion = table.iloc[0]
    name = champion["variant"]
    summary = write_reports(table, champion)

    versions = ensure_registered(params, raw_pixels(x_test[:1]))
    with tracking.run("evaluate", {"dvc_stage": "evaluate", "champion": name}):
        reports = [REPORTS_DIR / f"comparison.{suffix}" for suffix in ("csv", "md", "png")]
        tracking.record_evaluation({k: v for k, v in summary.items() if k.startswith("champion_")}, table, reports)
    tracking.set_champion(versions[name], name)

    print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    print(f"evaluate: champion {name} (version {versions[name]}): models:/{tracking.REGISTERED_MODEL}@champion")
    return name


def main() -> None:
    evaluate(load_params())


if __name__ == "__main__":
    stage.run("evaluate", main)
