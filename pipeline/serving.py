"""The model as MLflow serves it: raw pixels in, digit and class probabilities out."""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import Array

from pipeline.preprocess import IMAGE_PIXELS, to_features

SIGNATURE = mlflow.models.ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, IMAGE_PIXELS))]),
    outputs=Schema([ColSpec("long", "digit"), ColSpec(Array("double"), "probabilities")]),
)


def predict_digits(model, pixels) -> pd.DataFrame:
    """Rows of 784 intensities 0-255 (or 28x28 images) -> `digit` and the ten class `probabilities`."""
    probabilities = model.predict(to_features(np.asarray(pixels)), verbose=0)
    return pd.DataFrame(
        {"digit": probabilities.argmax(axis=1), "probabilities": [row.tolist() for row in probabilities]}
    )


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """Wraps the trained .keras file; preprocessing is the training code's own to_features."""

    def load_context(self, context):
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)

    # np.ndarray: the input the tensor signature delivers; also tells MLflow to validate by SIGNATURE.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        return predict_digits(self.model, model_input)


# MLflow "models from code": logging names this file, and loading the model runs it, so
# nothing is pickled.
mlflow.models.set_model(DigitClassifier())
