"""Replicates trained together (one program, a copy per seed) are the same computation as each
seed trained alone: weight for weight, for a plain, a BatchNorm and a Dropout variant."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import training
from pipeline.data import load_split
from pipeline.model import ThreefryDropout, build_network
from pipeline.paths import split_path
from tests.conftest import small_workspace

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


@pytest.mark.parametrize("variant", ["mlp-256-64", "mlp-256-64-bn", "mlp-256-64-bn-dropout"])
def test_a_copy_trained_together_is_the_seed_trained_alone(splits, variant):
    params, train, validation = splits
    together = trained(params, variant, SEEDS, train, validation)
    alone = trained(params, variant, [1], train, validation)
    initial_kernel = build_network(params.variants[variant], 1).get_weights()[0]

    for ours, theirs in zip(together[1][0].get_weights(), alone[1][0].get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, **TOLERANCE)
    assert not np.allclose(together[1][0].get_weights()[0], initial_kernel, **TOLERANCE)  # it did train
    np.testing.assert_allclose(together[1][1]["val_loss"], alone[1][1]["val_loss"], rtol=1e-5)
    # The tolerance tells seeds apart: another seed's copy is far from this one.
    other = together[2][0].get_weights()[0]
    assert not np.allclose(other, alone[1][0].get_weights()[0], **TOLERANCE)


def test_the_same_seed_gives_the_same_masks_and_order_on_a_rerun(splits):
    params, train, validation = splits
    first = trained(params, "mlp-256-64-bn-dropout", [2], train, validation)[2][0].get_weights()
    second = trained(params, "mlp-256-64-bn-dropout", [2], train, validation)[2][0].get_weights()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_each_copy_is_an_ordinary_keras_model_file(splits, tmp_path):
    params, train, validation = splits
    model, _ = trained(params, "mlp-256-64-bn-dropout", [0, 1], train, validation)[1]
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
    batches = iter(training.replicate_batches(train, [0, 1], batch_size=train[0].shape[0]))
    (first_epoch, _), (second_epoch, _) = next(batches), next(batches)
    # A whole epoch per batch: each seed's is a permutation of every image, its own, new every epoch.
    for epoch in (first_epoch, second_epoch):
        for key in ("seed_0", "seed_1"):
            assert sorted(map(bytes, epoch[key].numpy())) == sorted(map(bytes, train[0]))
    assert not np.array_equal(first_epoch["seed_0"], first_epoch["seed_1"])
    assert not np.array_equal(first_epoch["seed_0"], second_epoch["seed_0"])
    again = next(iter(training.replicate_batches(train, [1], batch_size=train[0].shape[0])))[0]
    np.testing.assert_array_equal(again["seed_1"], first_epoch["seed_1"])


def test_orders_are_unrelated_from_epoch_to_epoch_and_seed_to_seed():
    # Images that are their own index: a batch of a whole epoch is that epoch's order. The
    # training split's size: index_shuffle's orders were fine at 5,000 images, alike at 49,500.
    count = 49_500
    indices = (np.arange(count, dtype=np.float32)[:, None], np.zeros((count, 10), np.float32))
    batches = iter(training.replicate_batches(indices, [0, 1], batch_size=count))
    (first_epoch, _), (second_epoch, _) = next(batches), next(batches)
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
