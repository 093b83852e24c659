"""Stage `train@VARIANT`: train every replicate of one variant (one per seed of `train.seeds`),
save their models and histories and the variant's aggregates, record it all in MLflow.

    python -m pipeline.train mlp-512-256-128
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import pandas as pd

from pipeline import plots, registry, stage, store, tracking, training
from pipeline.config import Params, load_params
from pipeline.data import load_split, raw_pixels
from pipeline.files import atomic_path, atomic_write
from pipeline.model import dense_kernels, has_finite_weights
from pipeline.paths import (
    PROCESSED_DIR,
    replicate_history_path,
    replicate_model_path,
    split_path,
    train_reports_dir,
)

FIGURES = ("weights.png", "curves.png")


def used_params(params: Params, variant: str) -> dict:
    """Every parameter this stage reads: what MLflow records and the params hash covers."""
    return {
        **params.variants[variant].model_dump(),
        "variant": variant,
        "train.seeds": params.train.seeds,
        "train.max_epochs": params.train.max_epochs,
        "train.strategy": params.train.strategy,
        **{f"data.{key}": value for key, value in params.data.model_dump().items()},
    }


def history_frame(history: dict[str, list[float]]) -> pd.DataFrame:
    curves = pd.DataFrame(history)[training.METRICS]
    curves.insert(0, "epoch", range(1, len(curves) + 1))
    return curves


def epoch_statistics(histories: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per epoch, the mean over replicates of every metric (`val_accuracy`) and its standard
    deviation (`val_accuracy_std`; NaN for one replicate)."""
    stats = pd.concat(histories.values()).groupby("epoch")[training.METRICS].agg(["mean", "std"])
    stats.columns = [name if statistic == "mean" else f"{name}_std" for name, statistic in stats.columns]
    return stats


def replicate_metrics(curves: pd.DataFrame, train_seconds: float) -> dict:
    """The final epoch's metrics, the best validation accuracy and its epoch (the first, on a tie)."""
    final, best = curves.iloc[-1], curves.loc[curves["val_accuracy"].idxmax()]
    return {
        **{name: float(final[name]) for name in training.METRICS},
        "best_val_accuracy": float(best["val_accuracy"]),
        "best_epoch": int(best["epoch"]),
        "train_seconds": round(train_seconds, 2),
    }


def variant_metrics(seeds: list[int], replicates: dict[int, dict], diverged: dict[int, dict], epochs: int, param_count: int) -> dict:
    """The variant's replicates.json: mean and standard deviation over its finished replicates, then
    each of them, then the diverged ones (seed, epoch, reason), which no statistic includes.

    Never a bare NaN: no replicate, or one, has no standard deviation (null).
    """
    table = pd.DataFrame([metrics for metrics in replicates.values()], columns=training.METRICS)
    mean = {name: float(table[name].mean()) if len(table) else None for name in training.METRICS}
    spread = {f"{name}_std": float(table[name].std()) if len(table) > 1 else None for name in training.METRICS}
    return {
        "seeds": seeds,
        "epochs": epochs,
        "params": param_count,
        **mean,
        **spread,
        "train_seconds": round(sum(r["train_seconds"] for r in [*replicates.values(), *diverged.values()]), 2),
        "replicates": [{"seed": seed, **metrics} for seed, metrics in replicates.items()],
        "diverged": [{"seed": seed, "epoch": failure["epoch"], "reason": failure["reason"]} for seed, failure in diverged.items()],
    }


def model_summary(model: keras.Model) -> str:
    """Keras' summary of the network alone: a trained model's would count Adam's slots as parameters."""
    lines: list[str] = []
    keras.models.clone_model(model).summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return "\n".join(lines)


def write_replicate(variant: str, seed: int, model: keras.Model | None, curves: pd.DataFrame) -> None:
    """Its history, and its model unless it diverged (then no model file, not even an old one)."""
    if model is None:
        replicate_model_path(variant, seed).parent.mkdir(parents=True, exist_ok=True)  # DVC's output, if empty
        replicate_model_path(variant, seed).unlink(missing_ok=True)
    else:
        with atomic_path(replicate_model_path(variant, seed)) as path:
            model.save(path)
    with atomic_write(replicate_history_path(variant, seed), "w") as f:
        curves.to_csv(f, index=False)  # a diverged epoch's NaN is an empty cell


SUMMARY_METRICS = ("epochs", "params", "val_accuracy", "val_accuracy_std", "val_loss", "train_seconds")


def summary_metrics(metrics: dict) -> dict:
    """What DVC shows as the variant's metrics (`dvc exp show`, `dvc metrics diff`): a few flat numbers;
    the per-replicate detail, and the training split's figures, are in replicates.json."""
    return {
        **{key: metrics[key] for key in SUMMARY_METRICS},
        "finished": len(metrics["replicates"]),
        "diverged": len(metrics["diverged"]),
    }


def write_variant(variant: str, models: dict[int, keras.Model], histories: dict[int, pd.DataFrame], metrics: dict) -> None:
    out = train_reports_dir(variant)
    with atomic_write(out / "replicates.json", "w") as f:
        json.dump(metrics, f, indent=2, allow_nan=False)
    with atomic_write(out / "metrics.json", "w") as f:
        json.dump(summary_metrics(metrics), f, indent=2, allow_nan=False)
    kernels = {seed: dense_kernels(model) for seed, model in models.items()}
    plots.save_png(plots.weight_violins(kernels, variant), out / "weights.png")
    plots.save_png(plots.training_curves(histories, variant), out / "curves.png")


def divergence(guard: training.StopOnDivergence, seed: int, model: keras.Model, epochs: int) -> dict | None:
    """How a replicate diverged (epoch, reason), or None if it finished with finite weights."""
    if seed in guard.diverged:
        epoch, reason = guard.diverged[seed]
        return {"epoch": epoch, "reason": reason}
    if not has_finite_weights(model):
        return {"epoch": epochs, "reason": f"weights became non-finite by epoch {epochs}"}
    return None


def train(params: Params, variant: str, processed_dir=PROCESSED_DIR) -> dict:
    strategy = training.distribution_strategy(params.train.strategy)  # first: it must precede any TF op
    store.check_store()  # a store that cannot take the results fails now, not after training
    train_split = load_split(split_path("train", processed_dir))
    validation_split = load_split(split_path("validation", processed_dir))
    seeds, epochs = params.train.seeds, params.epochs(variant)
    print(f"train@{variant}: seeds {seeds}, {epochs} epochs each, {len(train_split[0]):,} images")

    groups = training.replicate_groups(params)
    if not training.is_chief(strategy):  # a worker of several: it trains, the chief records
        for group in groups:
            for seed, (_, history) in training.train_group(params, variant, group, strategy, train_split, validation_split).items():
                print(f"train@{variant}: seed {seed} worker done, val_accuracy {history['val_accuracy'][-1]:.4f}")
        return {}

    used = used_params(params, variant)
    stage_tag = {"dvc_stage": f"train@{variant}"}
    models, histories, replicates, diverged, diverged_curves = {}, {}, {}, {}, {}
    with tracking.run(variant, {**stage_tag, "params_hash": tracking.params_hash(used)}, params=used, system_metrics=True) as variant_run:
        tracking.log_datasets(
            {
                "training": (*train_split, split_path("train", processed_dir)),
                "validation": (*validation_split, split_path("validation", processed_dir)),
            }
        )
        for group in groups:  # every seed at once, or one after another; a child run per seed
            with tracking.run_per_seed(variant, group, stage_tag, used) as run_ids:
                started = time.perf_counter()
                epoch_metrics = tracking.EpochMetrics(run_ids, lambda logs, group=group: training.split_logs(logs, group))
                # A replicate whose loss turns NaN or infinite ends FAILED there and then.
                guard = training.StopOnDivergence(group, lambda seed, epoch, reason: tracking.fail_run(run_ids[seed], reason))
                trained = training.train_group(params, variant, group, strategy, train_split, validation_split, [epoch_metrics, guard])
                seconds = (time.perf_counter() - started) / len(group)  # the group's time, shared equally
                for seed, (model, history) in trained.items():
                    curves = history_frame(history)
                    failure = divergence(guard, seed, model, len(curves))
                    if failure:
                        if seed not in guard.diverged:
                            tracking.fail_run(run_ids[seed], failure["reason"])
                        diverged[seed] = {**failure, "train_seconds": round(seconds, 2)}
                        curves = curves[curves["epoch"] <= failure["epoch"]]
                        write_replicate(variant, seed, None, curves)
                        diverged_curves[seed] = curves.assign(seed=seed)
                        print(f"train@{variant}: seed {seed} diverged ({failure['reason']}): left out of the ensemble and the comparison")
                        continue
                    replicates[seed] = replicate_metrics(curves, seconds)
                    write_replicate(variant, seed, model, curves)
                    summary = {name: replicates[seed][name] for name in ("best_val_accuracy", "best_epoch", "train_seconds")}
                    tracking.record_replicate(run_ids[seed], summary, replicate_model_path(variant, seed))
                    models[seed], histories[seed] = model, curves.assign(seed=seed)
                    print(f"train@{variant}: seed {seed} val_accuracy {replicates[seed]['val_accuracy']:.4f}")

        param_count = model.count_params()
        metrics = variant_metrics(seeds, replicates, diverged, epochs, param_count)
        write_variant(variant, models, histories or diverged_curves, metrics)  # the blow-up, if nothing finished
        tracking.record_variant(
            variant,
            param_count,
            epoch_statistics(histories) if histories else None,
            metrics["train_seconds"],
            [train_reports_dir(variant) / name for name in FIGURES],
            model_summary(model),
        )
        if replicates:  # the seed ensemble of its finished replicates, logged in this run as the served model
            version = registry.log_and_register_model(
                {seed: replicate_model_path(variant, seed) for seed in replicates}, variant, raw_pixels(validation_split[0][:1]),
                registry.dvc_experiment(),
            )
    if not replicates:
        tracking.fail_run(variant_run.info.run_id, f"every replicate diverged (seeds {', '.join(map(str, seeds))})")
        if not registry.dvc_experiment():
            registry.drop_alias(variant)  # an older version must not be served under its name
        print(f"train@{variant}: every replicate diverged: nothing registered; evaluate lists the variant without statistics")
        return metrics
    spread = f" ± {metrics['val_accuracy_std']:.4f}" if metrics["val_accuracy_std"] is not None else ""
    left_out = f", {len(diverged)} diverged and left out" if diverged else ""
    print(
        f"train@{variant}: {metrics['params']:,} parameters, mean val_accuracy {metrics['val_accuracy']:.4f}{spread} "
        f"over {len(replicates)} seeds{left_out}; registered version {version}"
    )
    return metrics


def main(argv: list[str] | None = None) -> None:
    params = load_params()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=sorted(params.variants))
    train(params, parser.parse_args(argv).variant)


if __name__ == "__main__":
    stage.run("train", main)
