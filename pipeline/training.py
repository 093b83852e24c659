"""Training a variant's replicates: Keras models and their per-epoch histories, nothing written,
nothing logged.

Replicates train together (one program holding a copy per seed, model.build_replicates) or, behind
`speed.replicates_together: false`, one after another through the very same code, in groups of one.

The train stage records what comes out (pipeline.train, pipeline.tracking); benchmarks and
tests call the same functions.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline import multi_worker
from pipeline.config import Params, VariantSpec
from pipeline.model import build_model, build_replicates, export_replicate, learning_rate_at, replicate_key

Split = tuple[np.ndarray, np.ndarray]
METRICS = ["loss", "accuracy", "val_loss", "val_accuracy"]


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


def train_alone_multi_worker(
    params: Params, variant: str, seed: int, strategy: tf.distribute.Strategy, train: Split, validation: Split, callbacks
) -> tuple[keras.Model, dict[str, list[float]]]:
    """One replicate under multi_worker, with tf.distribute's own loop: Keras' fit cannot train there yet."""
    spec = params.variants[variant]
    keras.utils.set_random_seed(seed)  # the data order; the layers carry their own seeds
    with strategy.scope():  # variables on every worker; batches split between them
        model = build_model(spec, seed, params.speed.steps_per_execution)
    history = multi_worker.fit(
        model,
        strategy,
        train,
        validation,
        spec.batch_size,
        params.speed.validation_batch_size,
        params.epochs(variant),
        seed,
        list(callbacks),
    )
    return model, history


def replicate_batches(train: Split, seeds: list[int], batch_size: int, epoch: int | tf.Variable = 0) -> tf.data.Dataset:
    """One epoch of training batches for a together model: per seed, its own images in its own order.

    The order of epoch e for seed s is a stateless shuffle keyed by (s, e): the same alone or
    together, on every rerun, whatever else drew random numbers. (Not index_shuffle: at MNIST's size
    its orders for neighbouring keys are correlated, from epoch to epoch and from seed to seed.)
    `epoch` may be a variable, read each time the dataset is iterated: train_group sets it as each
    epoch begins. The dataset is finite, its length known, so Keras ends each epoch after exactly
    its batches, whatever steps_per_execution (given an endless one, Keras runs whole executions
    past the epoch's end).
    """
    images, labels = tf.constant(train[0]), tf.constant(train[1])
    positions = tf.range(len(train[0]), dtype=tf.int64)
    steps = -(-len(train[0]) // batch_size)

    def epoch_order(seed: int) -> tf.data.Dataset:
        order = tf.data.Dataset.from_tensors(tf.constant(seed, tf.int64)).map(
            lambda key: tf.random.experimental.stateless_shuffle(positions, seed=tf.stack([key, tf.cast(epoch, tf.int64)]))
        )
        return order.flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))

    keys = [replicate_key(seed) for seed in seeds]

    def gather(*indices):
        return (
            {key: tf.gather(images, index) for key, index in zip(keys, indices)},
            {key: tf.gather(labels, index) for key, index in zip(keys, indices)},
        )

    batches = tf.data.Dataset.zip(tuple(epoch_order(seed) for seed in seeds)).map(gather)
    return batches.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(4)


class EpochOrder(keras.callbacks.Callback):
    """Sets the variable replicate_batches keys its order by to the epoch about to begin (Keras makes
    a new iterator of a finite dataset after on_epoch_begin)."""

    def __init__(self, epoch: tf.Variable):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)


def replicate_validation(validation: Split, seeds: list[int], batch_size: int) -> tf.data.Dataset:
    """The validation images, one feed per copy: each is judged on all of them."""
    keys = [replicate_key(seed) for seed in seeds]
    return (
        tf.data.Dataset.from_tensor_slices(validation)
        .batch(batch_size)
        .map(lambda x, y: ({key: x for key in keys}, {key: y for key in keys}))
        .cache()
    )


def split_logs(logs: dict, seeds: list[int]) -> dict[int, dict[str, float]]:
    """Keras' logs of a together model (`val_seed_3_accuracy`, ...) per seed (`val_accuracy`, ...).

    A model of one copy has Keras' plain names already.
    """
    if len(seeds) == 1:
        return {seeds[0]: {name: logs[name] for name in METRICS}}
    return {seed: {name: logs[replicate_log_key(name, seed)] for name in METRICS} for seed in seeds}


class StopOnDivergence(keras.callbacks.Callback):
    """Watches each replicate's training loss (every steps_per_execution steps) and validation loss
    (every epoch): the first time one is NaN or infinite, that replicate has diverged. It is
    reported at once (`on_diverged(seed, epoch, reason)`) and kept in `diverged`; once every
    replicate of the group has, training stops. Replicates of a together model do not share a
    gradient, so the others train on unharmed (tests/test_together.py)."""

    def __init__(self, seeds: list[int], on_diverged=lambda seed, epoch, reason: None):
        super().__init__()
        self.seeds, self.on_diverged = seeds, on_diverged
        self.diverged: dict[int, tuple[int, str]] = {}  # seed -> (epoch, reason)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs or {}, ["loss"])

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs or {}, ["loss", "val_loss"])

    def _check(self, logs: dict, names: list[str]) -> None:
        for seed in self.seeds:
            if seed in self.diverged:
                continue
            for name in names:
                key = name if len(self.seeds) == 1 else replicate_log_key(name, seed)
                value = float(logs.get(key, 0.0))
                if not np.isfinite(value):
                    said = "NaN" if np.isnan(value) else "infinite"
                    reason = f"{'validation loss' if name == 'val_loss' else 'loss'} became {said} at epoch {self.epoch}"
                    self.diverged[seed] = (self.epoch, reason)
                    self.on_diverged(seed, self.epoch, reason)
                    break
        if len(self.diverged) == len(self.seeds):
            self.model.stop_training = True


def replicate_log_key(name: str, seed: int) -> str:
    """Keras' name for a together model's metric of one copy: `seed_3_loss`, `val_seed_3_loss`."""
    return f"val_{replicate_key(seed)}_{name[4:]}" if name.startswith("val_") else f"{replicate_key(seed)}_{name}"


def learning_rate_schedule(spec: VariantSpec, epochs: int) -> list[keras.callbacks.Callback]:
    """Keras' LearningRateScheduler setting model.learning_rate_at as each epoch begins; none for a constant rate."""
    if spec.lr_schedule == "constant":
        return []
    return [keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate_at(spec, epoch, epochs))]


def train_group(
    params: Params,
    variant: str,
    seeds: list[int],
    strategy: tf.distribute.Strategy,
    train: Split,
    validation: Split,
    callbacks=(),
    verbose: int = 2,
) -> dict[int, tuple[keras.Model, dict[str, list[float]]]]:
    """Train the replicates of `seeds` as one model: per seed, an ordinary Keras model and its history."""
    if params.train.strategy == "multi_worker":
        (seed,) = seeds  # replicate_groups: one at a time there
        return {seed: train_alone_multi_worker(params, variant, seed, strategy, train, validation, callbacks)}
    spec, epochs = params.variants[variant], params.epochs(variant)
    with strategy.scope():  # variables on every replica; batches split between them
        replicates = build_replicates(spec, seeds, params.speed.steps_per_execution)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    history = replicates.fit(
        replicate_batches(train, seeds, spec.batch_size, epoch),
        epochs=epochs,
        shuffle=False,  # the order is replicate_batches' own
        validation_data=replicate_validation(validation, seeds, params.speed.validation_batch_size),
        callbacks=[EpochOrder(epoch), *learning_rate_schedule(spec, epochs), *callbacks],
        verbose=verbose,  # 2: one line per epoch, readable in DVC's captured output
    ).history
    trained_epochs = len(history["loss"])  # fewer than epochs if every replicate diverged (StopOnDivergence)
    per_epoch = [split_logs({name: values[epoch] for name, values in history.items()}, seeds) for epoch in range(trained_epochs)]
    return {
        seed: (
            export_replicate(replicates, spec, seed),
            {name: [float(logs[seed][name]) for logs in per_epoch] for name in METRICS},
        )
        for seed in seeds
    }


def replicate_groups(params: Params) -> list[list[int]]:
    """The seeds that train together: all at once, or one by one (`speed.replicates_together: false`,
    and always under multi_worker, whose own loop trains one model)."""
    seeds = params.train.seeds
    if params.speed.replicates_together and params.train.strategy != "multi_worker":
        return [seeds]
    return [[seed] for seed in seeds]
