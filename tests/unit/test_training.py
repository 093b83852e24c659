"""pipeline/training.py: replicates trained together (one program, a copy per seed) are the same
computation as each seed trained alone by Keras' own fit, weight for weight and epoch for epoch;
each seed sees its own order; the copies are ordinary Keras models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import training
from pipeline.data import load_split
from pipeline.model import ThreefryDropout, build_model, build_network
from pipeline.paths import split_path
from tests.helpers import small_workspace

SEEDS = [0, 1, 2]
# XLA may fuse a together program's sums in another order than a lone copy's: float rounding.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


@pytest.fixture(scope="module")
def splits(tmp_path_factory, default_params, canonical_npz):
    root = tmp_path_factory.mktemp("together")
    # 1,500 images: 10 training steps of 128 per epoch, two epochs, the last batch a short one.
    params = small_workspace(root, default_params, canonical_npz, subset=1500, max_epochs=2, seeds=SEEDS)
    train = load_split(split_path("train", root / "data/processed"))
    validation = load_split(split_path("validation", root / "data/processed"))
    return params, train, validation


def trained(params, variant, seeds, train, validation):
    return training.train_group(params, variant, seeds, tf.distribute.get_strategy(), train, validation, verbose=0)


@pytest.fixture(scope="module")
def together(splits):
    """Each variant's SEEDS trained together, once for the module (the models are only read)."""
    params, train, validation = splits
    done = {}

    def of(variant):
        if variant not in done:
            done[variant] = trained(params, variant, SEEDS, train, validation)
        return done[variant]
    return of


@pytest.mark.parametrize("variant", ["mlp-256-64", "mlp-256-64-bn"])
def test_a_copy_trained_together_is_plain_keras_fit_of_its_seed(splits, together, variant):
    """The reference is Keras' own fit of build_model(spec, seed), one call per epoch on the images
    in that epoch's documented order (a stateless shuffle keyed by seed and epoch), batch by batch.
    (Dropout draws its masks in another way in each, so the variants without it.)"""
    params, train, validation = splits
    spec, seed, epochs = params.variants[variant], 1, params.epochs(variant)
    ours = together(variant)[seed]

    alone, history, batch_means = build_model(spec, seed), {}, []
    batch_sizes = np.diff([*range(0, len(train[0]), spec.batch_size), len(train[0])])

    class BatchLosses(keras.callbacks.Callback):
        """fit's per-batch logs are running means weighted by batch size: the batches' own losses, averaged."""

        def on_epoch_begin(self, epoch, logs=None):
            self.running = []

        def on_train_batch_end(self, batch, logs=None):
            self.running.append(logs["loss"])

        def on_epoch_end(self, epoch, logs=None):
            totals = np.array(self.running) * np.cumsum(batch_sizes)
            batch_means.append(float(np.mean(np.diff(totals, prepend=0.0) / batch_sizes)))

    for epoch in range(epochs):
        order = tf.random.experimental.stateless_shuffle(tf.range(len(train[0]), dtype=tf.int64), seed=[seed, epoch]).numpy()
        logs = alone.fit(train[0][order], train[1][order], batch_size=spec.batch_size, epochs=1, shuffle=False,
                         validation_data=validation, callbacks=[BatchLosses()], verbose=0).history
        for name, values in logs.items():
            history.setdefault(name, []).extend(values)
    # A together model reports each copy's training loss as Keras reports any output's of a
    # multi-output model: the mean of its batches' losses, the short last batch counted as one.
    history["loss"] = batch_means

    assert epochs == 2 and len(ours[0].get_weights()) == len(alone.get_weights())
    for weights, keras_fit in zip(ours[0].get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_allclose(weights, keras_fit, **TOLERANCE)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(ours[1][name], history[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # The tolerance tells one more step apart: a third epoch moves the weights well beyond it.
    alone.fit(train[0], train[1], batch_size=spec.batch_size, epochs=1, shuffle=False, verbose=0)
    assert not np.allclose(ours[0].get_weights()[0], alone.get_weights()[0], **TOLERANCE)


def test_a_dropout_copy_trained_together_is_the_seed_trained_alone(splits, together):
    """Keras' fit draws Dropout masks its own way: here the reference is the seed alone in a group of one."""
    params, train, validation = splits
    variant = "mlp-256-64-bn-dropout"
    ours = together(variant)
    alone = trained(params, variant, [1], train, validation)
    initial_kernel = build_network(params.variants[variant], 1).get_weights()[0]

    for weights, theirs in zip(ours[1][0].get_weights(), alone[1][0].get_weights(), strict=True):
        np.testing.assert_allclose(weights, theirs, **TOLERANCE)
    assert not np.allclose(ours[1][0].get_weights()[0], initial_kernel, **TOLERANCE)  # it did train
    np.testing.assert_allclose(ours[1][1]["val_loss"], alone[1][1]["val_loss"], rtol=1e-5)
    # The tolerance tells seeds apart: another seed's copy is far from this one.
    assert not np.allclose(ours[2][0].get_weights()[0], alone[1][0].get_weights()[0], **TOLERANCE)


def test_a_vat_copy_trained_together_is_the_seed_trained_alone(splits, together):
    """VAT's random probe directions are each seed's own stream, its term each copy's own loss: the
    copy among three is the seed in a group of one. And the term does train: without it, other weights."""
    params, train, validation = splits
    spec = params.variants["mlp-256-64-bn"].model_copy(update={"vat_epsilon": 2.0})
    vat_params = params.model_copy(update={"variants": {**params.variants, "vat": spec}})
    ours = trained(vat_params, "vat", SEEDS, train, validation)
    alone = trained(vat_params, "vat", [1], train, validation)

    for weights, theirs in zip(ours[1][0].get_weights(), alone[1][0].get_weights(), strict=True):
        np.testing.assert_allclose(weights, theirs, **TOLERANCE)
    np.testing.assert_allclose(ours[1][1]["val_loss"], alone[1][1]["val_loss"], rtol=1e-5)
    without_vat = together("mlp-256-64-bn")[1][0]
    assert not np.allclose(ours[1][0].get_weights()[0], without_vat.get_weights()[0], **TOLERANCE)


def test_the_same_seed_gives_the_same_masks_and_order_on_a_rerun(splits):
    params, train, validation = splits
    first = trained(params, "mlp-256-64-bn-dropout", [2], train, validation)[2][0].get_weights()
    second = trained(params, "mlp-256-64-bn-dropout", [2], train, validation)[2][0].get_weights()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_each_copy_is_an_ordinary_keras_model_file(splits, together, tmp_path):
    params, train, validation = splits
    model, _ = together("mlp-256-64-bn-dropout")[1]
    path = tmp_path / "seed-1.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)  # no custom_objects: Keras' own layers only
    assert not any(isinstance(layer, ThreefryDropout) for layer in loaded.layers)
    plain = build_network(params.variants["mlp-256-64-bn-dropout"], 1)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in plain.layers]
    images = validation[0][:64]
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


def test_seeds_see_their_own_data_order(splits):
    params, train, _ = splits
    whole = train[0].shape[0]
    first_epoch, second_epoch = (next(iter(training.replicate_batches(train, [0, 1], whole, epoch)))[0] for epoch in (0, 1))
    # A whole epoch per batch: each seed's is a permutation of every image, its own, new every epoch.
    for epoch in (first_epoch, second_epoch):
        for key in ("seed_0", "seed_1"):
            assert sorted(map(bytes, epoch[key].numpy())) == sorted(map(bytes, train[0]))
    assert not np.array_equal(first_epoch["seed_0"], first_epoch["seed_1"])
    assert not np.array_equal(first_epoch["seed_0"], second_epoch["seed_0"])
    again = next(iter(training.replicate_batches(train, [1], whole)))[0]
    np.testing.assert_array_equal(again["seed_1"], first_epoch["seed_1"])


def test_an_epoch_is_its_batches_whatever_the_steps_per_execution(splits):
    """Keras runs whole executions of steps_per_execution steps: on an endless dataset an epoch of
    10 batches would train 64 steps. Counted by the optimizer itself."""
    params, train, validation = splits
    spec = params.variants["mlp-256-64"]
    steps = -(-len(train[0]) // spec.batch_size)
    assert steps == 10 and params.speed.steps_per_execution > steps
    counts = []

    class Steps(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            counts.append(int(self.model.optimizer.iterations.numpy()))

    training.train_group(params, "mlp-256-64", [0], tf.distribute.get_strategy(), train, validation, callbacks=[Steps()], verbose=0)
    assert counts == [steps, 2 * steps]


def test_orders_are_unrelated_from_epoch_to_epoch_and_seed_to_seed():
    # Images that are their own index: a batch of a whole epoch is that epoch's order. The
    # training split's size: index_shuffle's orders were fine at 5,000 images, alike at 49,500.
    count = 49_500
    indices = (np.arange(count, dtype=np.float32)[:, None], np.zeros((count, 10), np.float32))
    first_epoch, second_epoch = (next(iter(training.replicate_batches(indices, [0, 1], count, epoch)))[0] for epoch in (0, 1))
    orders = {name: epoch[key].numpy().ravel() for name, epoch, key in [
        ("seed 0, epoch 1", first_epoch, "seed_0"),
        ("seed 0, epoch 2", second_epoch, "seed_0"),
        ("seed 1, epoch 1", first_epoch, "seed_1"),
    ]}
    orders["unshuffled"] = np.arange(count)
    # Independent orders correlate by about 1/sqrt(49,500) = 0.005; index_shuffle's did by 0.75.
    for other in ("seed 0, epoch 2", "seed 1, epoch 1", "unshuffled"):
        assert abs(np.corrcoef(orders["seed 0, epoch 1"], orders[other])[0, 1]) < 0.05, other


def test_threefry_dropout_drops_at_the_rate_and_keeps_the_mean(default_params):
    layer = ThreefryDropout(0.4, seed=7)
    ones = tf.ones((200, 500))
    dropped = tf.function(lambda x: layer(x, training=True), jit_compile=True)(ones).numpy()
    assert abs((dropped == 0).mean() - 0.4) < 0.01
    assert abs(dropped.mean() - 1.0) < 0.02
    np.testing.assert_array_equal(layer(ones, training=False), ones)


def test_the_schedule_sets_each_epochs_learning_rate_in_keras_fit(splits):
    """Keras' own LearningRateScheduler, fed by model.learning_rate_at: what the optimizer used each
    epoch, as Keras logs it, against the hand-worked cosine (1 + cos(pi e / 4)) / 2."""
    params, train, validation = splits
    spec = params.variants["mlp-256-64"].model_copy(update={"lr_schedule": "cosine", "learning_rate": 1e-3})
    network = build_model(spec, 0)
    history = network.fit(*train, batch_size=256, epochs=4, verbose=0, callbacks=training.learning_rate_schedule(spec, 4)).history
    assert history["learning_rate"] == pytest.approx([1e-3, 1e-3 * (1 + 2 ** -0.5) / 2, 0.5e-3, 1e-3 * (1 - 2 ** -0.5) / 2], rel=1e-6)
    assert training.learning_rate_schedule(params.variants["mlp-256-64"], 4) == []  # constant: Keras' fit untouched
