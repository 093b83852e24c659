"""MNIST as every stage and the served model see it: the canonical arrays, the splits, the features.

Numpy only: the served model ships this file (and errors.py), so it must not pull in more.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

IMAGE_PIXELS = 28 * 28
NUM_CLASSES = 10
TRAIN_IMAGES = 60_000
MAX_SERVED_BATCH = 4096  # images per request to the served model: bounds what one costs in memory and time
# What the served model accepts (its MLmodel metadata `input`, docs/serving.md).
SERVED_IMAGE = f"{IMAGE_PIXELS} raw pixel intensities 0-255 (a 28x28 image, row-major)"
SERVED_INPUT = (
    f"rows of {SERVED_IMAGE}, 1 to {MAX_SERVED_BATCH} rows a "
    "request: uint8, integers or floats, as a numpy array (N x 784 or N x 28 x 28), a pandas DataFrame of 784 "
    "columns, JSON `inputs` / `instances` / `dataframe_split` / `dataframe_records`, or CSV with a header row (as "
    "`DataFrame.to_csv(index=False)` writes). Refused: a CSV without its header line, features already scaled to [0, 1], "
    "booleans, anything not a number."
)

# sha256 of each array's raw bytes in Keras' mnist.npz: the definition of "canonical".
ARRAY_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
ARRAY_SHAPES = {
    "x_train": (TRAIN_IMAGES, 28, 28),
    "y_train": (TRAIN_IMAGES,),
    "x_test": (10_000, 28, 28),
    "y_test": (10_000,),
}

Arrays = dict[str, np.ndarray]


def sha256_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def verify(arrays: Arrays) -> dict[str, str]:
    """Check names, shapes, dtypes and digests of the raw arrays; return the digests."""
    missing = sorted(set(ARRAY_SHA256) - set(arrays))
    if missing:
        raise DataError(f"missing arrays: {', '.join(missing)}")
    digests = {}
    for name, expected in ARRAY_SHA256.items():
        array = arrays[name]
        if array.shape != ARRAY_SHAPES[name] or array.dtype != np.uint8:
            raise DataError(
                f"{name} is {array.dtype}{list(array.shape)}, expected uint8{list(ARRAY_SHAPES[name])}"
            )
        digests[name] = sha256_array(array)
        if digests[name] != expected:
            raise DataError(f"{name} does not match the canonical MNIST digest")
    return digests


def load_npz(path: Path | str) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file: {exc}") from None


def load_split(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Load one processed split and check it has the shapes and dtypes preprocess writes."""
    arrays = load_npz(path)
    x, y = arrays.get("x"), arrays.get("y")
    well_formed = (
        x is not None
        and y is not None
        and x.dtype == np.float32
        and y.dtype == np.float32
        and x.ndim == 2
        and x.shape[1] == IMAGE_PIXELS
        and y.shape == (len(x), NUM_CLASSES)
    )
    if not well_formed:
        found = {name: f"{a.dtype}{list(a.shape)}" for name, a in arrays.items()}
        raise DataError(
            f"{path} should hold x: float32[N, {IMAGE_PIXELS}] and y: float32[N, {NUM_CLASSES}], "
            f"found {found}; rerun `dvc repro preprocess`"
        )
    return x, y


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


def raw_pixels(features: np.ndarray) -> np.ndarray:
    """Undo to_features' scaling: the 0-255 intensities a client sends the served model, as MNIST stores them (uint8)."""
    return np.rint(features * 255).astype(np.uint8)
