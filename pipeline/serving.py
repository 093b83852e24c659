"""The model as MLflow serves it: a variant's seed ensemble, raw pixels in, digit and class
probabilities out.

Requests carry rows of 784 raw pixel intensities 0-255, row-major 28x28, as MNIST stores them:
uint8, ints or floats, in an array, a DataFrame, JSON or CSV (SERVED_INPUT says it in full). The model
applies the training pipeline's own `to_features`, so serving cannot drift from training. Inputs
that would fool it get a 400 instead: features already scaled to [0, 1], booleans.

This is an MLflow "models from code" file: logging names it, loading the model runs it.
The served model ships it with exactly the package files it imports (see registry.SERVED_FILES).
"""

from __future__ import annotations

import functools

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from pipeline.data import MAX_SERVED_BATCH, SERVED_INPUT, to_features
from pipeline.ensemble import ensemble_probabilities

SEND_RAW = "send raw pixel intensities 0-255 (MNIST's own uint8 values): the model scales them itself"


class NonFiniteOutput(RuntimeError):
    """The model computed NaN or infinity: never sent as an answer."""


def numbers_for_names(columns) -> bool:
    """Whether a DataFrame's column names are an image's pixel values: every name a number, and not
    the column numbers a header holds (0, 1, ... or 1, 2, ...). The scoring server reads a CSV's
    first line as its header, so a CSV without one arrives this way, one image short (pandas renames
    a repeated value: 0, 0.1, 0.2 ...)."""
    names = [str(name) for name in columns]
    if not names or names in ([str(i) for i in range(len(names))], [str(i) for i in range(1, len(names) + 1)]):
        return False
    try:
        [float(name) for name in names]
    except ValueError:
        return False
    return True


def pixel_rows(model_input) -> np.ndarray:
    """What a request carries, as an array of intensities, whatever form it came in (SERVED_INPUT);
    ValueError for booleans, non-numbers, rows that look like features already scaled to [0, 1], and
    a CSV without its header line (its first image would be lost)."""
    if isinstance(model_input, pd.DataFrame) and numbers_for_names(model_input.columns):
        raise ValueError(
            "the column names are numbers, not a header: a CSV's first line is its header, so without one the first "
            "image is lost and the answers no longer line up with the rows. Add a header line, as "
            "`DataFrame.to_csv(index=False)` writes it (0,1,...,783)"
        )
    pixels = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else np.asarray(model_input)
    if pixels.dtype == object:  # mixed JSON or DataFrame columns: booleans among them, strings, nulls
        values = pixels.ravel()
        if any(isinstance(value, (bool, np.bool_)) for value in values):
            raise ValueError(f"found booleans: {SEND_RAW}")
        kinds = {"null" if value is None else type(value).__name__ for value in values if not isinstance(value, (int, float, np.number))}
        if kinds:
            raise ValueError(f"pixel intensities must be numbers: found {', '.join(sorted(kinds))}; {SEND_RAW}")
        pixels = pixels.astype(np.float64)
    if pixels.dtype.kind == "b":
        raise ValueError(f"found booleans: {SEND_RAW}")
    if pixels.dtype.kind not in "iuf":
        raise ValueError(f"pixel intensities must be numbers, got {pixels.dtype}; {SEND_RAW}")
    if pixels.dtype.kind == "f" and pixels.ndim >= 2 and pixels.size and np.isfinite(pixels).all():
        rows = pixels.reshape(len(pixels), -1)
        scaled = np.flatnonzero((rows.max(axis=1) <= 1) & (rows != np.round(rows)).any(axis=1))
        if scaled.size:
            named = ", ".join(map(str, scaled[:5])) + (", ..." if scaled.size > 5 else "")
            raise ValueError(
                f"{scaled.size} of {len(rows)} rows (row {named}) look like features already scaled to [0, 1] "
                f"(every value at most 1, some fractional): {SEND_RAW}"
            )
    return pixels


def predict_digits(members, model_input) -> pd.DataFrame:
    """Rows of 784 intensities 0-255 (or 28x28 images), in any form SERVED_INPUT says -> `digit` and the
    ten class `probabilities`, the mean of the members'."""
    features = to_features(pixel_rows(model_input))
    if not 0 < len(features) <= MAX_SERVED_BATCH:
        raise ValueError(f"a request carries 1 to {MAX_SERVED_BATCH} images, this one {len(features)}")
    # predict_on_batch: one compiled call per member; predict() sets up a loop per call.
    probabilities = ensemble_probabilities([member.predict_on_batch(features) for member in members])
    if not np.isfinite(probabilities).all():
        bad = int((~np.isfinite(probabilities)).any(axis=1).sum())
        raise NonFiniteOutput(f"the model computed non-finite probabilities for {bad} of {len(features)} images: it is broken, not the request")
    return pd.DataFrame(
        {"digit": probabilities.argmax(axis=1), "probabilities": [row.tolist() for row in probabilities]}
    )


def leave_tracebacks_out_of_answers() -> None:
    """MLflow's scoring server puts its own traceback (the server's paths and code) into the 400 it
    answers to a body it cannot parse (a malformed CSV): the client needs the message only."""
    from mlflow.pyfunc import scoring_server

    handler = scoring_server._handle_serving_error
    if not isinstance(handler, functools.partial):
        scoring_server._handle_serving_error = functools.partial(handler, include_traceback=False)


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """Wraps the replicates' .keras files (artifacts `seed-N`); preprocessing is the training code's
    own to_features."""

    def load_context(self, context):
        import keras

        leave_tracebacks_out_of_answers()

        by_seed = sorted(context.artifacts.items(), key=lambda item: int(item[0].removeprefix("seed-")))
        self.members = [keras.saving.load_model(path, compile=False) for _, path in by_seed]

    # No type hint and no input schema: MLflow hands over what the client sent (uint8 arrays, integer
    # CSV cells, DataFrames), and pixel_rows decides, with messages that say what to send.
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        try:
            return predict_digits(self.members, model_input)
        except (ValueError, TypeError) as error:
            # MLflow answers an MlflowException of this kind with 400 and the message, no stack trace.
            raise MlflowException.invalid_parameter_value(f"{error}. Accepted: {SERVED_INPUT}") from None
        except NonFiniteOutput as error:  # a 500 that says so, not a 200 carrying NaN (which is not JSON)
            raise MlflowException(str(error), error_code=INTERNAL_ERROR) from None


mlflow.models.set_model(DigitClassifier())
