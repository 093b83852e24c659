"""A variant's trained replicates, scored: the train stage's files checked, each finished
replicate's validation and test scores and class probabilities, its seed ensemble (what is
served), and the per-epoch bands dvc.yaml's charts overlay."""

from __future__ import annotations

import json
from typing import NamedTuple

import keras
import numpy as np
import pandas as pd

from pipeline import analysis
from pipeline.data import DataError
from pipeline.ensemble import ensemble_probabilities
from pipeline.model import has_finite_weights, load_replicate, restore_hint
from pipeline.paths import replicate_history_path, replicate_model_path, train_reports_dir


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

