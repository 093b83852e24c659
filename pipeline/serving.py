"""The model as MLflow serves it: a variant's seed ensemble, raw pixels in, digit and class
probabilities out.

Requests carry rows of 784 pixel intensities 0-255 (ints or floats, row-major 28x28);
the model applies the training pipeline's own `to_features`, so serving cannot drift
from training.

This is an MLflow "models from code" file: logging names it, loading the model runs it.
The served model ships it with exactly the package files it imports (see tracking.SERVED_FILES).
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from pipeline.data import to_features
from pipeline.ensemble import ensemble_probabilities

MAX_BATCH = 4096  # images per request: bounds what one request costs in memory and time


class NonFiniteOutput(RuntimeError):
    """The model computed NaN or infinity: never sent as an answer."""


def predict_digits(members, pixels) -> pd.DataFrame:
    """Rows of 784 intensities 0-255 (or 28x28 images) -> `digit` and the ten class `probabilities`,
    the mean of the members'."""
    features = to_features(np.asarray(pixels))
    if not 0 < len(features) <= MAX_BATCH:
        raise ValueError(f"a request carries 1 to {MAX_BATCH} images, this one {len(features)}")
    # predict_on_batch: one compiled call per member; predict() sets up a loop per call.
    probabilities = ensemble_probabilities([member.predict_on_batch(features) for member in members])
    if not np.isfinite(probabilities).all():
        bad = int((~np.isfinite(probabilities)).any(axis=1).sum())
        raise NonFiniteOutput(f"the model computed non-finite probabilities for {bad} of {len(features)} images: it is broken, not the request")
    return pd.DataFrame(
        {"digit": probabilities.argmax(axis=1), "probabilities": [row.tolist() for row in probabilities]}
    )


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """Wraps the replicates' .keras files (artifacts `seed-N`); preprocessing is the training code's
    own to_features."""

    def load_context(self, context):
        import keras

        by_seed = sorted(context.artifacts.items(), key=lambda item: int(item[0].removeprefix("seed-")))
        self.members = [keras.saving.load_model(path, compile=False) for _, path in by_seed]

    # np.ndarray: the input the tensor signature delivers; also tells MLflow to validate by the signature.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        try:
            return predict_digits(self.members, model_input)
        except ValueError as error:
            # MLflow answers an MlflowException of this kind with 400 and the message.
            raise MlflowException.invalid_parameter_value(str(error)) from None
        except NonFiniteOutput as error:  # a 500 that says so, not a 200 carrying NaN (which is not JSON)
            raise MlflowException(str(error), error_code=INTERNAL_ERROR) from None


mlflow.models.set_model(DigitClassifier())
