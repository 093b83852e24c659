"""Stage `train@VARIANT`: train one variant, save its model and reports, record it in MLflow.

    python -m pipeline.train mlp-512-256-128
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import pandas as pd

from pipeline import plots, stage, tracking, training
from pipeline.config import Params, load_params
from pipeline.data import load_split, raw_pixels
from pipeline.files import atomic_path, atomic_write
from pipeline.model import dense_kernels
from pipeline.paths import PROCESSED_DIR, history_path, model_path, split_path, train_reports_dir

FIGURES = ("weights.png", "curves.png")


def used_params(params: Params, variant: str) -> dict:
    """Every parameter this stage reads: what MLflow records and the params hash covers."""
    return {
        **params.variants[variant].model_dump(),
        "variant": variant,
        "train.max_epochs": params.train.max_epochs,
        "train.strategy": params.train.strategy,
        **{f"data.{key}": value for key, value in params.data.model_dump().items()},
    }


def model_summary(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return "\n".join(lines)


def write_outputs(variant: str, model: keras.Model, curves: pd.DataFrame, metrics: dict) -> None:
    """The stage's files: model, metrics, history, figures; each written whole or not at all."""
    out = train_reports_dir(variant)
    with atomic_path(model_path(variant)) as path:
        model.save(path)
    with atomic_write(out / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    with atomic_write(history_path(variant), "w") as f:
        curves.to_csv(f, index=False)
    plots.save_png(plots.weight_violins(dense_kernels(model), variant), out / "weights.png")
    plots.save_png(plots.training_curves(curves, variant), out / "curves.png")


def train(params: Params, variant: str, processed_dir=PROCESSED_DIR) -> dict:
    strategy = training.distribution_strategy(params.train.strategy)  # first: it must precede any TF op
    train_split = load_split(split_path("train", processed_dir))
    validation_split = load_split(split_path("validation", processed_dir))
    print(f"train@{variant}: {params.epochs(variant)} epochs, {len(train_split[0]):,} images")

    if not training.is_chief(strategy):  # a worker of several: it trains, the chief records
        _, history = training.train_variant(params, variant, strategy, train_split, validation_split)
        print(f"train@{variant}: worker done, val_accuracy {history['val_accuracy'][-1]:.4f}; the chief logs and saves")
        return {"val_accuracy": history["val_accuracy"][-1]}

    used = used_params(params, variant)
    tags = {"dvc_stage": f"train@{variant}", "params_hash": tracking.params_hash(used)}
    with tracking.run(variant, tags, params=used):
        tracking.log_datasets(
            {
                "training": (*train_split, split_path("train", processed_dir)),
                "validation": (*validation_split, split_path("validation", processed_dir)),
            }
        )
        started = time.perf_counter()
        model, history = training.train_variant(
            params, variant, strategy, train_split, validation_split, [tracking.EpochMetrics()]
        )
        train_seconds = time.perf_counter() - started

        curves = pd.DataFrame(history)[["loss", "accuracy", "val_loss", "val_accuracy"]]
        curves.insert(0, "epoch", range(1, len(curves) + 1))
        final = curves.iloc[-1]
        metrics = {
            "loss": float(final["loss"]),
            "accuracy": float(final["accuracy"]),
            "val_loss": float(final["val_loss"]),
            "val_accuracy": float(final["val_accuracy"]),
            "epochs": len(curves),
            "params": model.count_params(),
            "train_seconds": round(train_seconds, 2),
        }
        write_outputs(variant, model, curves, metrics)
        version = tracking.record_training(
            variant,
            model.count_params(),
            {name: value for name, value in metrics.items() if name != "params"},
            [train_reports_dir(variant) / name for name in FIGURES],
            model_summary(model),
            model_path(variant),
            raw_pixels(validation_split[0][:1]),
        )
    print(f"train@{variant}: {metrics['params']:,} parameters, val_accuracy {metrics['val_accuracy']:.4f}; registered version {version}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    params = load_params()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=sorted(params.variants))
    train(params, parser.parse_args(argv).variant)


if __name__ == "__main__":
    stage.run("train", main)
