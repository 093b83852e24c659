"""Where classifiers differ, from their class probabilities on one split: accuracy and loss, what
each extra ensemble member buys, per-class precision, recall and F1, calibration, the confused
digit pairs. scikit-learn and numpy; nothing here reads or writes files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

from pipeline import stats
from pipeline.data import NUM_CLASSES
from pipeline.ensemble import ensemble_probabilities

CALIBRATION_BINS = 15
CLASSES = list(range(NUM_CLASSES))


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the true class (scikit-learn's log_loss, which clips at float eps)."""
    return float(log_loss(labels, probabilities, labels=CLASSES))


def ensemble_sizes(member_probabilities: list[np.ndarray], labels: np.ndarray) -> list[float]:
    """The accuracy of the ensemble of the first k members, for k = 1..K (members in seed order)."""
    return [accuracy(ensemble_probabilities(member_probabilities[:k]), labels) for k in range(1, len(member_probabilities) + 1)]


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Top-label ECE: images binned by their top probability into `bins` equal-width bins of (0, 1];
    the mean over images of |accuracy - mean confidence| of their bin."""
    return float(reliability_table(probabilities, labels, bins).eval("images * abs(accuracy - confidence)").sum() / len(labels))


def reliability_table(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Per non-empty confidence bin: its images, their mean top probability and their accuracy."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # bin b holds (b/bins, (b+1)/bins]
    frame = pd.DataFrame({"bin": which, "confidence": confidence, "correct": correct})
    table = frame.groupby("bin").agg(images=("correct", "size"), confidence=("confidence", "mean"), accuracy=("correct", "mean"))
    return table.reset_index()


def per_class(labels: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """Per digit: precision, recall, F1 and support (scikit-learn)."""
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=CLASSES, zero_division=0)
    return pd.DataFrame({"digit": CLASSES, "precision": precision, "recall": recall, "f1": f1, "support": support})


def confused_pairs(labels: np.ndarray, predicted: np.ndarray, top: int = 5) -> pd.DataFrame:
    """The most frequent mistakes: (true digit, predicted digit, images), most first."""
    matrix = confusion_matrix(labels, predicted, labels=CLASSES)
    np.fill_diagonal(matrix, 0)
    pairs = pd.DataFrame(
        [(true, guess, int(matrix[true, guess])) for true in CLASSES for guess in CLASSES if matrix[true, guess]],
        columns=["true", "predicted", "images"],
    )
    return pairs.sort_values(["images", "true", "predicted"], ascending=[False, True, True], kind="stable").head(top).reset_index(drop=True)


def describe(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The summary of one classifier on one split."""
    return {
        "accuracy": accuracy(probabilities, labels),
        "nll": negative_log_likelihood(probabilities, labels),
        "ece": expected_calibration_error(probabilities, labels),
    }


def ensemble_size_table(members: dict[str, dict[str, list[np.ndarray]]], labels: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per variant and k = 1..K, the accuracy of the ensemble of its first k members (`members[variant][split]`,
    in seed order) on validation and test."""
    rows = [
        {"variant": variant, "members": k, "val_accuracy": val, "test_accuracy": test}
        for variant, by_split in members.items()
        for k, (val, test) in enumerate(
            zip(*(ensemble_sizes(by_split[split], labels[split]) for split in ("validation", "test"))), start=1
        )
    ]
    return pd.DataFrame(rows, columns=["variant", "members", "val_accuracy", "test_accuracy"])


def where_they_differ(members: dict[str, list[np.ndarray]], ensembles: dict[str, np.ndarray | None], labels: np.ndarray) -> dict[str, pd.DataFrame]:
    """On one split, per variant (its members' and its ensemble's probabilities): per-class precision,
    recall and F1 of the ensemble, with the mean and 95% t-interval of its members' F1; calibration
    (ECE, NLL) of the ensemble and of the members; the ensemble's most confused digit pairs."""
    per_class_rows, calibration, pairs = [], [], []
    for variant, ensemble in ensembles.items():
        if ensemble is None:
            continue
        predicted = ensemble.argmax(axis=1)
        classes = per_class(labels, predicted)
        member_f1 = np.array([per_class(labels, member.argmax(axis=1))["f1"].to_numpy() for member in members[variant]])
        intervals = [stats.mean_interval(member_f1[:, digit]) for digit in CLASSES]
        per_class_rows.append(classes.assign(
            variant=variant, f1_replicate_mean=member_f1.mean(axis=0),
            f1_replicate_ci_low=[low for low, _ in intervals], f1_replicate_ci_high=[high for _, high in intervals],
        ))
        described = [describe(member, labels) for member in members[variant]]
        row = {"variant": variant, **{f"ensemble_{k}": v for k, v in describe(ensemble, labels).items()}}
        for name in ("ece", "nll"):
            values = [member[name] for member in described]
            low, high = stats.mean_interval(values)
            row.update({f"replicate_{name}_mean": float(np.mean(values)), f"replicate_{name}_ci_low": low, f"replicate_{name}_ci_high": high})
        calibration.append(row)
        pairs.append(confused_pairs(labels, predicted).assign(variant=variant))
    return {
        "per_class": pd.concat(per_class_rows, ignore_index=True)[["variant", "digit", "precision", "recall", "f1", "support", "f1_replicate_mean", "f1_replicate_ci_low", "f1_replicate_ci_high"]],
        "calibration": pd.DataFrame(calibration),
        "confused_pairs": pd.concat(pairs, ignore_index=True)[["variant", "true", "predicted", "images"]],
    }
