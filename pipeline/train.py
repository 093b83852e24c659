"""Stage `train@VARIANT`: train one variant, save its model and reports, log it all to MLflow.

    python -m pipeline.train mlp-512-256-128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline import multi_worker, plots, tracking
from pipeline.atomic import atomic_path, atomic_write, stop_on_sigterm
from pipeline.config import HISTORY_DIR, MODELS_DIR, PROCESSED_DIR, TRAIN_REPORTS_DIR, Params, ParamsError, load_params
from pipeline.download import DataError
from pipeline.model import build_model, dense_kernels
from pipeline.preprocess import load_split, split_path


def model_path(variant: str) -> Path:
    return MODELS_DIR / f"{variant}.keras"


def reports_dir(variant: str) -> Path:
    return TRAIN_REPORTS_DIR / variant


def history_path(variant: str) -> Path:
    return HISTORY_DIR / f"{variant}.csv"  # one directory of histories: dvc.yaml plots it whole


def used_params(params: Params, variant: str) -> dict:
    """Every parameter this stage reads: what MLflow records and the params hash covers."""
    return {
        **params.variants[variant].model_dump(),
        "variant": variant,
        "train.max_epochs": params.train.max_epochs,
        "train.strategy": params.train.strategy,
        **{f"data.{key}": value for key, value in params.data.model_dump().items()},
    }


def raw_pixels(features: np.ndarray) -> np.ndarray:
    """Undo to_features' scaling: what a client sends the served model."""
    return np.rint(features * 255).astype(np.float64)


def model_summary(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return "\n".join(lines)


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """TensorFlow's own strategies: `spec.batch_size` stays the global batch, split across replicas."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()  # every GPU here; the CPU alone when there is none
    if name == "multi_worker":
        return multi_worker.strategy()  # the hosts in TF_CONFIG
    return tf.distribute.get_strategy()  # the default: one device


def fit(model: keras.Model, params: Params, variant: str, train_data, validation_data, callbacks, verbose=2) -> dict[str, list[float]]:
    """Keras' fit with the variant's batch size and epochs, validating after every epoch: the history.

    Under multi_worker, tf.distribute's own loop: Keras' fit cannot train there yet.
    """
    spec = params.variants[variant]
    if params.train.strategy == "multi_worker":
        return multi_worker.fit(
            model, model.distribute_strategy, train_data, validation_data,
            spec.batch_size, params.train.validation_batch_size, params.epochs(variant), spec.seed, callbacks,
        )  # fmt: skip
    x_train, y_train = train_data
    return model.fit(
        x_train, y_train,
        batch_size=spec.batch_size, epochs=params.epochs(variant),
        validation_data=validation_data, validation_batch_size=params.train.validation_batch_size,
        callbacks=callbacks,
        verbose=verbose,  # 2: one line per epoch, readable in DVC's captured output
    ).history  # fmt: skip


def train(params: Params, variant: str, processed_dir: Path = PROCESSED_DIR) -> dict:
    strategy = distribution_strategy(params.train.strategy)  # first: multi_worker's precedes any TF op
    spec = params.variants[variant]
    epochs = params.epochs(variant)
    x_train, y_train = load_split("train", processed_dir)
    x_val, y_val = load_split("validation", processed_dir)

    keras.utils.set_random_seed(spec.seed)  # shuffling; the layers carry their own seeds
    with strategy.scope():  # variables on every replica; batches split between them
        model = build_model(spec, params.train.steps_per_execution)
    if not multi_worker.is_chief(strategy):  # a worker of several: it trains, the chief logs and writes
        history = fit(model, params, variant, (x_train, y_train), (x_val, y_val), [])
        print(f"train@{variant}: worker done, val_accuracy {history['val_accuracy'][-1]:.4f}; the chief logs and saves")
        return {"val_accuracy": history["val_accuracy"][-1]}

    used = used_params(params, variant)
    tags = {"dvc_stage": f"train@{variant}", "params_hash": tracking.params_hash(used)}
    with tracking.run(variant, tags):
        tracking.log_params({**used, "param_count": model.count_params()})
        tracking.log_datasets(
            {
                "training": (x_train, y_train, split_path("train", processed_dir)),
                "validation": (x_val, y_val, split_path("validation", processed_dir)),
            }
        )
        print(f"train@{variant}: {model.count_params():,} parameters, {epochs} epochs, {len(x_train):,} images")
        started = time.perf_counter()
        history = fit(model, params, variant, (x_train, y_train), (x_val, y_val), [tracking.EpochMetrics()])
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

        tracking.log_metrics({f"final_{name}": value for name, value in metrics.items() if name != "params"})
        out = reports_dir(variant)
        for figure in ("weights.png", "curves.png"):
            tracking.log_artifact(out / figure)
        tracking.log_text(model_summary(model), "model_summary.txt")
        version = tracking.log_and_register_model(model_path(variant), variant, raw_pixels(x_val[:1]))
    print(f"train@{variant}: val_accuracy {metrics['val_accuracy']:.4f}; registered version {version}")
    return metrics


def write_outputs(variant: str, model: keras.Model, curves: pd.DataFrame, metrics: dict) -> None:
    out = reports_dir(variant)
    with atomic_path(model_path(variant)) as path:
        model.save(path)
    with atomic_write(out / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    with atomic_write(history_path(variant), "w") as f:
        curves.to_csv(f, index=False)
    figures = {
        "weights.png": plots.weight_violins(dense_kernels(model), variant),
        "curves.png": plots.training_curves(curves, variant),
    }
    for name, figure in figures.items():
        plots.save_png(figure, out / name)


def main(argv: list[str] | None = None) -> None:
    params = load_params()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=sorted(params.variants))
    train(params, parser.parse_args(argv).variant)


if __name__ == "__main__":
    stop_on_sigterm()
    try:
        main()
    except (ParamsError, DataError) as error:
        sys.exit(f"train: {error}")
