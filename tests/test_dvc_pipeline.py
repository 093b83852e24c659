"""End to end: `dvc repro preprocess` in a fresh copy of the repository, as a user runs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.download import ARRAY_SHA256
from pipeline.preprocess import load_split

from conftest import REPO_ROOT


def copy_of_repository(destination: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    return destination


def dvc(*args, cwd):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_repro_preprocess_yields_the_canonical_splits_and_then_does_nothing(tmp_path):
    repo = copy_of_repository(tmp_path)

    first = dvc("repro", "preprocess", cwd=repo)
    assert "Running stage 'download'" in first and "Running stage 'preprocess'" in first

    record = json.loads((repo / "data/raw/mnist.json").read_text())
    assert record["sha256"] == ARRAY_SHA256
    sizes = {}
    for name in ("train", "validation", "test"):
        x, y = load_split(name, repo / "data/processed")
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert (y.sum(axis=1) == 1).all()
        sizes[name] = len(x)
    assert sizes == {"train": 49_500, "validation": 10_500, "test": 10_000}

    again = dvc("repro", "preprocess", cwd=repo)
    assert "Running stage" not in again
    assert "didn't change" in again
