"""Where classifiers differ, from their class probabilities on one split: accuracy and loss, what
each extra ensemble member buys, per-class precision, recall and F1, calibration, the confused
digit pairs. scikit-learn and numpy; nothing here reads or writes files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

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
