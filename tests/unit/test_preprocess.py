import numpy as np
import pytest

from pipeline.data import DataError, load_split, to_features
from pipeline.preprocess import one_hot, preprocess, save_split


def test_features_are_flat_float32_in_unit_range():
    images = np.array([np.full((28, 28), 0), np.full((28, 28), 255), np.full((28, 28), 51)], dtype=np.uint8)
    features = to_features(images)
    assert features.shape == (3, 784)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features[:, 0], [0.0, 1.0, 0.2], rtol=1e-6)


def test_features_accept_flat_rows_of_any_number_type_and_leave_the_input_alone():
    rows = np.full((2, 784), 255.0)
    features = to_features(rows.tolist())
    assert features.dtype == np.float32 and features.max() == 1.0
    assert rows.max() == 255.0


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 785)), "784 pixels"),
        (np.zeros(784), "784 pixels"),
        (np.full((1, 784), np.nan), "must be numbers"),
        (np.full((1, 784), 256), "0-255"),
        (np.full((1, 784), -1), "0-255"),
    ],
)
def test_features_refuse_what_is_not_an_image(images, message):
    with pytest.raises(ValueError, match=message):
        to_features(images)


def test_one_hot_encodes_digits_and_refuses_other_labels():
    encoded = one_hot(np.array([3, 0, 9], dtype=np.uint8))
    assert encoded.dtype == np.float32 and encoded.shape == (3, 10)
    assert encoded.argmax(axis=1).tolist() == [3, 0, 9]
    assert encoded.sum(axis=1).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown categories"):
        one_hot(np.array([10]))


def run(default_params, canonical_npz, out, **data):
    return preprocess(default_params.data.model_copy(update=data), canonical_npz, out)


def test_a_subset_is_split_and_the_test_set_stays_whole(default_params, canonical_npz, canonical_arrays, tmp_path):
    sizes = run(default_params, canonical_npz, tmp_path, subset=1000)
    assert sizes == {"train": 825, "validation": 175, "test": 10_000}
    x_train, y_train = load_split(tmp_path / "train.npz")
    x_val, _ = load_split(tmp_path / "validation.npz")
    x_test, y_test = load_split(tmp_path / "test.npz")
    assert x_train.dtype == np.float32 and y_train.shape == (825, 10)
    # train + validation are exactly the first 1000 images, reordered.
    first = to_features(canonical_arrays["x_train"][:1000])
    together = np.concatenate([x_train, x_val])
    np.testing.assert_array_equal(np.sort(together.sum(axis=1)), np.sort(first.sum(axis=1)))
    np.testing.assert_array_equal(x_test, to_features(canonical_arrays["x_test"]))
    assert y_test.argmax(axis=1).tolist() == canonical_arrays["y_test"].tolist()


def test_the_split_follows_random_state(default_params, canonical_npz, tmp_path):
    for name, state in [("a", 0), ("b", 0), ("c", 1)]:
        run(default_params, canonical_npz, tmp_path / name, subset=500, random_state=state)
    a, b, c = (load_split(tmp_path / name / "validation.npz")[0] for name in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_processed_file_of_the_wrong_shape_is_refused(tmp_path):
    save_split("train", np.zeros((5, 783), np.float32), np.zeros((5, 10), np.float32), tmp_path)
    with pytest.raises(DataError, match="should hold x: float32"):
        load_split(tmp_path / "train.npz")
    save_split("train", np.zeros((5, 784)), np.zeros((5, 10), np.float32), tmp_path)
    with pytest.raises(DataError, match="float64"):
        load_split(tmp_path / "train.npz")


def test_raw_data_that_is_not_canonical_is_never_preprocessed(default_params, canonical_arrays, tmp_path):
    raw = tmp_path / "mnist.npz"
    np.savez(raw, **dict(canonical_arrays, y_train=np.zeros(60_000, np.uint8)))
    with pytest.raises(DataError, match="y_train does not match"):
        run(default_params, raw, tmp_path / "processed")
    assert not (tmp_path / "processed").exists()
