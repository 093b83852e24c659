"""Stage `preprocess`: raw MNIST -> float32 features and one-hot labels in three splits.

data/processed/{train,validation,test}.npz each hold `x` (N x 784, float32 in [0, 1])
and `y` (N x 10, float32 one-hot). Validation is carved out of the training images;
the test set is left whole and untouched until the evaluate stage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import OneHotEncoder

from pipeline import stage
from pipeline.config import DataParams, load_params
from pipeline.data import NUM_CLASSES, load_npz, to_features, verify
from pipeline.files import atomic_write
from pipeline.paths import PROCESSED_DIR, RAW_NPZ, split_path


def one_hot(labels: np.ndarray) -> np.ndarray:
    """Digits 0-9 -> float32 one-hot rows; any other label is an error."""
    encoder = OneHotEncoder(categories=[np.arange(NUM_CLASSES)], sparse_output=False, dtype=np.float32)
    return encoder.fit_transform(np.asarray(labels).reshape(-1, 1))


def save_split(name: str, x: np.ndarray, y: np.ndarray, directory: Path = PROCESSED_DIR) -> None:
    with atomic_write(split_path(name, directory)) as f:
        np.savez(f, x=x, y=y)  # uncompressed: train stages load it fast


def preprocess(params: DataParams, raw_npz: Path = RAW_NPZ, out_dir: Path = PROCESSED_DIR) -> dict[str, int]:
    raw = load_npz(raw_npz)
    verify(raw)  # never train on anything but the canonical arrays
    images, labels = raw["x_train"], raw["y_train"]
    if params.subset:
        images, labels = images[: params.subset], labels[: params.subset]
    x_train, x_val, y_train, y_val = train_test_split(
        to_features(images), one_hot(labels), test_size=params.test_size, random_state=params.random_state
    )
    splits = {
        "train": (x_train, y_train),
        "validation": (x_val, y_val),
        "test": (to_features(raw["x_test"]), one_hot(raw["y_test"])),
    }
    for name, (x, y) in splits.items():
        save_split(name, x, y, out_dir)
    sizes = {name: len(x) for name, (x, _) in splits.items()}
    print("preprocess: " + ", ".join(f"{name} {size:,}" for name, size in sizes.items()))
    return sizes


def main() -> None:
    preprocess(load_params().data)


if __name__ == "__main__":
    stage.run("preprocess", main)
