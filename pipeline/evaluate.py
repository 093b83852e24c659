"""Stage `evaluate`: every variant on the untouched test set; the table; the champion.

The champion is the variant with the best *validation* accuracy: the test set only reports,
it never chooses (the first study picked its best model on the test set).
"""

from __future__ import annotations

import json
import sys

import keras
import pandas as pd

from pipeline import plots, tracking
from pipeline.atomic import atomic_write, stop_on_sigterm
from pipeline.config import PROCESSED_DIR, REPORTS_DIR, Params, ParamsError, load_params
from pipeline.download import DataError
from pipeline.preprocess import load_split
from pipeline.train import model_path, raw_pixels, reports_dir

COLUMNS = [
    "variant", "hidden_layers", "batch_norm", "dropout", "params", "epochs",
    "val_accuracy", "test_loss", "test_accuracy", "train_seconds",
]  # fmt: skip


def comparison_table(params: Params, x_test, y_test) -> pd.DataFrame:
    rows = []
    for variant, spec in params.variants.items():
        model_file, metrics_file = model_path(variant), reports_dir(variant) / "metrics.json"
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


def register_missing(params: Params, x_example) -> dict[str, int]:
    """Each variant's registered version; what the MLflow store lost is logged again from DVC's files."""
    versions = tracking.registered_versions({variant: model_path(variant) for variant in params.variants})
    for variant, version in versions.items():
        if version is None:
            print(f"evaluate: {variant} is not in the MLflow registry with this model and serving code; "
                  f"registering it from {model_path(variant)}")  # fmt: skip
            with tracking.run(variant, {"dvc_stage": f"train@{variant}", "registered_by": "evaluate"}):
                versions[variant] = tracking.log_and_register_model(model_path(variant), variant, x_example)
    return versions


def evaluate(params: Params) -> str:
    x_test, y_test = load_split("test", PROCESSED_DIR)
    table = comparison_table(params, x_test, y_test)
    champion = table.iloc[0]
    name = champion["variant"]

    csv, markdown = REPORTS_DIR / "comparison.csv", REPORTS_DIR / "comparison.md"
    with atomic_write(csv, "w") as f:
        table.to_csv(f, index=False, float_format="%.4f")
    with atomic_write(markdown, "w") as f:
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

    versions = register_missing(params, raw_pixels(x_test[:1]))
    with tracking.run("evaluate", {"dvc_stage": "evaluate", "champion": name}):
        tracking.log_metrics({key: value for key, value in summary.items() if key.startswith("champion_")})
        tracking.log_table(table, "comparison.json")
        for path in (csv, markdown, REPORTS_DIR / "comparison.png"):
            tracking.log_artifact(path)
    tracking.set_champion(versions[name], name)

    print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    print(f"evaluate: champion {name} (version {versions[name]}): models:/{tracking.REGISTERED_MODEL}@champion")
    return name


def main() -> None:
    evaluate(load_params())


if __name__ == "__main__":
    stop_on_sigterm()
    try:
        main()
    except (ParamsError, DataError) as error:
        sys.exit(f"evaluate: {error}")
