"""pipeline/serving.py in-process: the served model, saved as registration saves it (models from
code, the package files it ships) from small trained members and loaded by mlflow.pyfunc, answers
every form of raw pixels with its members' mean probabilities, and refuses what would fool it.
The scoring server over HTTP: tests/scenarios/test_scoring_server.py."""

import io
import re

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.data import MAX_SERVED_BATCH
from pipeline.model import build_network
from tests.helpers import assert_answers_are_the_ensembles, ensemble_probabilities
from tests.servers import save_served_model

SEEDS = [0, 1]


@pytest.fixture(scope="module")
def members(trained_workspace):
    root, _ = trained_workspace
    return [root / f"models/mlp-256-64/seed-{seed}.keras" for seed in SEEDS]


@pytest.fixture(scope="module")
def served(members, tmp_path_factory):
    """The served model of the members, loaded in-process as `mlflow models serve` loads it."""
    return mlflow.pyfunc.load_model(str(save_served_model(tmp_path_factory.mktemp("served"), members)))


def test_every_in_process_form_gets_the_members_mean(served, members, canonical_arrays):
    """MNIST's own uint8 arrays, ints, floats, 28x28 images and DataFrames: the same answers, which
    are plain Keras' mean of the member files' probabilities."""
    images = canonical_arrays["x_test"][:20]  # uint8, 20 x 28 x 28
    rows = images.reshape(20, 784)
    expected = ensemble_probabilities(members, rows)
    for name, data in {
        "uint8": rows, "int64": rows.astype(np.int64), "float32": rows.astype(np.float32), "float64": rows.astype(np.float64),
        "28x28 uint8": images, "DataFrame uint8": pd.DataFrame(rows), "DataFrame float": pd.DataFrame(rows.astype(float)),
    }.items():
        frame = served.predict(data)
        assert list(frame.columns) == ["digit", "probabilities"], name
        assert_answers_are_the_ensembles(frame["digit"], frame["probabilities"].tolist(), expected)
        np.testing.assert_allclose(np.array(frame["probabilities"].tolist()).sum(axis=1), 1.0, atol=1e-5)


SCALED = "look like features already scaled to [0, 1] (every value at most 1, some fractional): send raw pixel intensities 0-255"


def test_scaled_features_and_booleans_are_refused_saying_to_send_raw_pixels(served, canonical_arrays):
    features = canonical_arrays["x_test"][:3].reshape(3, 784) / 255  # what the preprocess stage writes
    booleans = canonical_arrays["x_test"][:3].reshape(3, 784) > 127
    for data, says in [(features, f"3 of 3 rows (row 0, 1, 2) {SCALED}"), (booleans, "found booleans: send raw pixel intensities 0-255")]:
        with pytest.raises(mlflow.exceptions.MlflowException, match=re.escape(says)):
            served.predict(data)


ROW = [0] * 784


@pytest.mark.parametrize(
    "data, says",
    [
        (np.zeros((1, 700)), "expected images of 784 pixels (28x28), got shape (1, 700)"),
        (np.array([["a"] * 784]), "pixel intensities must be numbers, got <U1"),
        (pd.DataFrame([[None] * 784]), "pixel intensities must be numbers: found null"),
        (np.array([[0] * 783 + [256]]), "must lie in 0-255: found 0 to 256"),
        (np.full((1, 784), -1), "must lie in 0-255"),
        (np.array([[np.nan] * 784]), "must be numbers: found null, NaN or infinity"),
        (np.zeros((0, 784)), f"a request carries 1 to {MAX_SERVED_BATCH} images, this one 0"),
        (np.zeros((MAX_SERVED_BATCH + 1, 784)), f"a request carries 1 to {MAX_SERVED_BATCH} images"),
    ],
    ids=["short row", "non-numeric", "null", "above 255", "negative", "NaN", "empty batch", "batch too large"],
)
def test_what_is_not_a_batch_of_images_is_refused_naming_the_problem(served, data, says):
    with pytest.raises(mlflow.exceptions.MlflowException) as refused:
        served.predict(data)
    assert says in refused.value.message and refused.value.error_code == "INVALID_PARAMETER_VALUE"


def test_a_model_that_computes_nan_is_an_internal_error_never_an_answer(default_params, tmp_path):
    """Weights gone non-finite (registration refuses such a model: this one is saved directly)."""
    network = build_network(default_params.variants["mlp-256-64"], 0)
    weights = network.get_weights()
    weights[-1][:] = np.nan  # the output layer's bias
    network.set_weights(weights)
    network.save(tmp_path / "seed-0.keras")
    broken = mlflow.pyfunc.load_model(str(save_served_model(tmp_path, [tmp_path / "seed-0.keras"])))
    with pytest.raises(mlflow.exceptions.MlflowException) as refused:
        broken.predict(np.array([ROW]))
    assert refused.value.error_code == "INTERNAL_ERROR"
    assert "non-finite probabilities for 1 of 1 images" in refused.value.message


def test_a_csv_without_its_header_line_is_refused_and_with_it_every_image_is_answered(served, canonical_arrays):
    """Parsed by MLflow's scoring server's own CSV reader: without a header the first image would be
    its column names and the answers one short."""
    from mlflow.pyfunc.scoring_server import parse_csv_input

    images = canonical_arrays["x_test"][:5].reshape(5, 784)
    headerless = parse_csv_input(io.StringIO(pd.DataFrame(images).to_csv(index=False, header=False)))
    assert len(headerless) == 4  # what the model would be handed
    with pytest.raises(mlflow.exceptions.MlflowException) as refused:
        served.predict(headerless)
    assert "Add a header line" in refused.value.message
    for header in (True, [f"pixel{i}" for i in range(784)], list(range(1, 785))):
        with_header = parse_csv_input(io.StringIO(pd.DataFrame(images).to_csv(index=False, header=header)))
        assert len(served.predict(with_header)) == 5
