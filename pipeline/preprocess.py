"""Stage `preprocess`: raw MNIST -> float32 features and one-hot labels in three splits.

data/processed/{train,validation,test}.npz each hold `x` (N x 784, float32 in [0, 1])
and `y` (N x 10, float32 one-hot). Validation is carved out of the training images;
the test set is left whole and untouched until the evaluate stage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import OneHotEncoder

from pipeline.atomic import atomic_write, stop_on_sigterm
from pipeline.config import PROCESSED_DIR, RAW_NPZ, DataParams, ParamsError, load_params
from pipeline.download import DataError, load_npz, verify

IMAGE_PIXELS = 28 * 28
NUM_CLASSES = 10
SPLITS = ("train", "validation", "test")


def to_features(images: np.ndarray) -> np.ndarray:
    """Flatten images to 784 pixels and scale intensities 0-255 to float32 in [0, 1].

    The one preprocessing function: training data and served requests both go through it.
    """
    pixels = np.asarray(images)
    if pixels.ndim < 2 or int(np.prod(pixels.shape[1:])) != IMAGE_PIXELS:
        raise ValueError(f"expected images of {IMAGE_PIXELS} pixels (28x28), got shape {pixels.shape}")
    features = pixels.reshape(len(pixels), IMAGE_PIXELS).astype(np.float32)  # a copy, never float64
    if features.size and not np.isfinite(features).all():
        raise ValueError("pixel intensities must be numbers: found null, NaN or infinity")
    if features.size and (features.min() < 0 or features.max() > 255):
        raise ValueError(f"pixel intensities must lie in 0-255: found {features.min():g} to {features.max():g}")
    features /= 255
    return features


def one_hot(labels: np.ndarray) -> np.ndarray:
    """Digits 0-9 -> float32 one-hot rows; any other label is an error."""
    encoder = OneHotEncoder(categories=[np.arange(NUM_CLASSES)], sparse_output=False, dtype=np.float32)
    return encoder.fit_transform(np.asarray(labels).reshape(-1, 1))


def split_path(name: str, directory: Path = PROCESSED_DIR) -> Path:
    return Path(directory) / f"{name}.npz"


def save_split(name: str, x: np.ndarray, y: np.ndarray, directory: Path = PROCESSED_DIR) -> None:
    with atomic_write(split_path(name, directory)) as f:
        np.savez(f, x=x, y=y)  # uncompressed: train stages load it fast


def load_split(name: str, directory: Path = PROCESSED_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Load one split and check it has the shapes and dtypes this stage writes."""
    path = split_path(name, directory)
    arrays = load_npz(path)
    x, y = arrays.get("x"), arrays.get("y")
    if (
        x is None or y is None
        or x.dtype != np.float32 or y.dtype != np.float32
        or x.ndim != 2 or x.shape[1] != IMAGE_PIXELS
        or y.shape != (len(x), NUM_CLASSES)
    ):  # fmt: skip
        found = {name: f"{a.dtype}{list(a.shape)}" for name, a in arrays.items()}
        raise DataError(
            f"{path} should hold x: float32[N, {IMAGE_PIXELS}] and y: float32[N, {NUM_CLASSES}], "
            f"found {found}; rerun `dvc repro preprocess`"
        )
    return x, y


def preprocess(params: DataParams, raw_npz: Path = RAW_NPZ, out_dir: Path = PROCESSED_DIR) -> dict[str, int]:
    raw = load_npz(raw_npz)
    verify(raw)  # never train on anything but the canonical arrays
    images, labels = raw["x_train"], raw["y_train"]
    if params.subset:
        images, labels = images[: params.subset], labels[: params.subset]
    x_train, x_val, y_train, y_val = train_test_split(
        to_features(images), one_hot(labels),
        test_size=params.test_size, random_state=params.random_state,
    )  # fmt: skip
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
    stop_on_sigterm()
    try:
        main()
    except (ParamsError, DataError) as error:
        sys.exit(f"preprocess: {error}")
