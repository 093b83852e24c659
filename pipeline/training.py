"""Training one replicate of a variant: a Keras model and its per-epoch history, nothing written,
nothing logged.

The train stage records what comes out (pipeline.train, pipeline.tracking); benchmarks and
tests call the same functions.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline import multi_worker
from pipeline.config import Params
from pipeline.model import build_model

Split = tuple[np.ndarray, np.ndarray]


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """TensorFlow's own strategies: the variant's batch size stays the global batch, split across replicas.

    Create it before any other TensorFlow op: multi_worker's collectives are set up here.
    """
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()  # every GPU here; the CPU alone when there is none
    if name == "multi_worker":
        return multi_worker.strategy()  # the hosts in TF_CONFIG
    return tf.distribute.get_strategy()  # the default: one device


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one process that logs and writes: always, but for the other workers under multi_worker."""
    return multi_worker.is_chief(strategy)


def fit(
    model: keras.Model,
    params: Params,
    variant: str,
    seed: int,
    train: Split,
    validation: Split,
    callbacks,
    verbose: int = 2,
) -> dict[str, list[float]]:
    """Keras' fit with the variant's batch size and epochs, validating after every epoch: the history.

    Under multi_worker, tf.distribute's own loop: Keras' fit cannot train there yet.
    """
    spec, epochs = params.variants[variant], params.epochs(variant)
    if params.train.strategy == "multi_worker":
        return multi_worker.fit(
            model,
            model.distribute_strategy,
            train,
            validation,
            spec.batch_size,
            params.speed.validation_batch_size,
            epochs,
            seed,
            callbacks,
        )
    history = model.fit(
        *train,
        batch_size=spec.batch_size,
        epochs=epochs,
        validation_data=validation,
        validation_batch_size=params.speed.validation_batch_size,
        callbacks=callbacks,
        verbose=verbose,  # 2: one line per epoch, readable in DVC's captured output
    )
    return history.history


def train_replicate(
    params: Params,
    variant: str,
    seed: int,
    strategy: tf.distribute.Strategy,
    train: Split,
    validation: Split,
    callbacks=(),
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build the variant's model for `seed` under `strategy` and train it: the model and its history."""
    keras.utils.set_random_seed(seed)  # the data order; the layers carry their own seeds
    with strategy.scope():  # variables on every replica; batches split between them
        model = build_model(params.variants[variant], seed, params.speed.steps_per_execution)
    return model, fit(model, params, variant, seed, train, validation, list(callbacks))
