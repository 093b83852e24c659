"""Training over several hosts (`train.strategy: multi_worker`), tf.distribute's own recipe.

Keras 3.15's `fit` cannot train under MultiWorkerMirroredStrategy (keras-team/keras#20585:
it averages the first input batch across workers, then every step's scalar loss along an
axis it does not have; tests/test_training.py keeps checking). So this path runs the custom
training loop of TensorFlow's multi-worker guide: `strategy.run` per step, the Keras model,
optimizer and loss doing the work. When `fit` can, this module goes.

The loop reports what `fit` reports (epoch means of loss and accuracy, then validation) and
calls the callbacks' `on_epoch_end` with them. Every worker runs it; only the chief logs
and writes (pipeline.train).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from pipeline.errors import SetupError


def strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """Must come before any other TensorFlow op: the workers' collectives are set up here."""
    if "TF_CONFIG" not in os.environ:
        raise SetupError("train.strategy: multi_worker needs TF_CONFIG naming the workers (docs/team-setup.md)")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one worker that logs and writes: the `chief` task, else worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def _sums(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """Summed loss, correct answers and images of one replica's batch: sums add up across workers."""
    loss = keras.losses.categorical_crossentropy(labels, probabilities)
    correct = tf.equal(tf.argmax(labels, axis=-1), tf.argmax(probabilities, axis=-1))
    return tf.stack([tf.reduce_sum(loss), tf.reduce_sum(tf.cast(correct, tf.float32)), tf.cast(tf.size(loss), tf.float32)])


def fit(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    train_data: tuple[np.ndarray, np.ndarray],
    validation_data: tuple[np.ndarray, np.ndarray],
    batch_size: int,
    validation_batch_size: int,
    epochs: int,
    seed: int,
    callbacks: list[keras.callbacks.Callback],
) -> dict[str, list[float]]:
    """`batch_size` is the global batch: every worker takes its share of each one."""
    options = tf.data.Options()
    # Every worker holds the same arrays and shuffles them alike (same seed), then keeps its share.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA

    def distributed(arrays, batch, shuffle):
        data = tf.data.Dataset.from_tensor_slices(arrays)
        if shuffle:
            data = data.shuffle(len(arrays[0]), seed=seed, reshuffle_each_iteration=True)
        return strategy.experimental_distribute_dataset(data.batch(batch).with_options(options))

    @tf.function
    def train_step(batch):
        def step(images, labels):
            with tf.GradientTape() as tape:
                probabilities = model(images, training=True)
                # The mean over the global batch: the optimizer sums the workers' gradients.
                loss = tf.nn.compute_average_loss(keras.losses.categorical_crossentropy(labels, probabilities))
            model.optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            return _sums(labels, probabilities)

        return strategy.reduce("SUM", strategy.run(step, args=batch), axis=None)

    @tf.function
    def validation_step(batch):
        sums = strategy.run(lambda images, labels: _sums(labels, model(images, training=False)), args=batch)
        return strategy.reduce("SUM", sums, axis=None)

    training = distributed(train_data, batch_size, shuffle=True)
    validation = distributed(validation_data, validation_batch_size, shuffle=False)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    model.stop_training = False
    for callback in callbacks:
        callback.set_model(model)
    for epoch in range(epochs):
        for callback in callbacks:
            callback.on_epoch_begin(epoch)
        loss, correct, images = sum(train_step(batch) for batch in training).numpy()
        val_loss, val_correct, val_images = sum(validation_step(batch) for batch in validation).numpy()
        logs = {
            "loss": loss / images,
            "accuracy": correct / images,
            "val_loss": val_loss / val_images,
            "val_accuracy": val_correct / val_images,
        }
        for name, value in logs.items():
            history[name].append(float(value))
        print(f"Epoch {epoch + 1}/{epochs} - " + " - ".join(f"{name}: {value:.4f}" for name, value in logs.items()))
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if model.stop_training:  # every replicate diverged (training.StopOnDivergence)
            break
    return history
