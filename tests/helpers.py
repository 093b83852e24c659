"""What the tests share, imported as `from tests.helpers import ...` (test modules never import
each other): copies of the repository, a user's shell, params edits, the served ensemble computed
here from its member files."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import yaml

from pipeline.config import Params
from pipeline.preprocess import preprocess

REPO_ROOT = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]


def commit(repo: Path, message: str) -> None:
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", message], cwd=repo, check=True)


def copy_of_repository(destination: Path, mnist: Path | None = None) -> Path:
    """What a fresh clone holds (git's files, committed): with `mnist`, its download stage takes that
    local file instead of the network sources."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    if mnist is not None:
        edit_params(destination, lambda p: p["download"].update(sources=["file"], file=str(mnist)))
    subprocess.run([*GIT, "init", "-q"], cwd=destination, check=True)
    commit(destination, "copy")  # dvc exp needs a commit
    return destination


def clone(repository: Path, destination: Path) -> Path:
    """`cp -a` of a prepared repository (its outputs, DVC cache and MLflow store with it): a test
    changes its own copy, never the session's."""
    subprocess.run(["cp", "-a", str(repository), str(destination)], check=True)
    return destination


def edit_params(repo: Path, edit: Callable[[dict], None]) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


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


def stages_run(output: str) -> list[str]:
    """The stages `dvc repro` ran (or, with --dry, would run), in order."""
    return re.findall(r"Running stage '([^']+)'", output)


def outputs_in(directory: Path) -> list[str]:
    """What a stage left in an output directory (DVC's own .gitignore aside)."""
    return sorted(p.name for p in directory.glob("*") if p.name != ".gitignore") if directory.exists() else []


def stage_lines(stderr: str) -> list[str]:
    """What a stage itself printed to stderr: TensorFlow's start-up notices aside."""
    return [line for line in stderr.splitlines() if line and not re.match(r"(WARNING: All log messages|I0000 |W0000 )", line)]


def digests(root: Path, *names: str) -> dict[str, str]:
    """sha256 of every file under `names` (files or directories) of root, by relative path."""
    files = [path for name in names for path in ([root / name] if (root / name).is_file() else sorted((root / name).rglob("*")))]
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files if path.is_file()}


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.1):
    """Poll `condition` until it returns something truthy (returned); fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(poll)


def small_workspace(root: Path, default_params: Params, mnist: Path, subset: int, max_epochs: int, seeds=(0,)) -> Params:
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
    preprocess(params.data, mnist, root / "data/processed")
    return params


def ensemble_probabilities(member_files: list[Path], pixels: np.ndarray) -> np.ndarray:
    """The reference for every served answer: the member files loaded by plain Keras, their softmax
    outputs on the pixels scaled as preprocessing scales them, averaged."""
    features = np.asarray(pixels, dtype=np.float32).reshape(len(pixels), 784) / 255  # not the code under test's to_features
    members = [keras.saving.load_model(path, compile=False) for path in member_files]
    return np.mean(np.stack([member.predict_on_batch(features) for member in members]), axis=0)


def assert_answers_are_the_ensembles(digits, probabilities, expected: np.ndarray) -> None:
    """A served model's answers against ensemble_probabilities: the same digits, probabilities equal to float rounding."""
    np.testing.assert_array_equal(np.asarray(digits), expected.argmax(axis=1))
    np.testing.assert_allclose(np.asarray(probabilities, dtype=np.float32), expected, rtol=1e-5, atol=1e-6)


def default_raw() -> dict:
    """The shipped params.yaml as plain data."""
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def with_value(dotted_key: str, value) -> dict:
    """The shipped params with one key (`section.key.subkey`) set to `value`."""
    raw = default_raw()
    *parents, last = dotted_key.split(".")
    section = raw
    for key in parents:
        section = section[key]
    section[last] = value
    return raw


def only_variants(params: Params, *names: str) -> Params:
    """`params` with only the variants `names` (and their `promoted` entries, if any)."""
    return params.model_copy(update={
        "variants": {name: params.variants[name] for name in names},
        "promoted": {name: entry for name, entry in params.promoted.items() if name in names},
    })


def keep_variants(raw: dict, *names: str) -> None:
    """Raw params reduced to the variants `names` (and their `promoted` entries, if any)."""
    raw["variants"] = {name: raw["variants"][name] for name in names}
    raw["promoted"] = {name: entry for name, entry in (raw.get("promoted") or {}).items() if name in names}


def small_search(params: dict, study: str = "test-search", trials: int = 3, epochs=(2, 2), heartbeat_seconds: int = 5) -> None:
    """search.* for a quick study: one-layer designs of 32-64 units, one random trial, pruning from the
    first epoch. The heartbeat: a busy machine can delay one by seconds, and a worker silent for twice
    it has its trial failed under it; a test of killed workers shortens it."""
    params["search"].update(study=study, trials=trials, random_trials=1, heartbeat_seconds=heartbeat_seconds, timeout_minutes=None)
    params["search"]["pruner"].update(startup_trials=1, warmup_epochs=0)
    params["search"]["space"].update(depth=[1, 1], width=[32, 64], epochs=list(epochs))


def one_hot_rows(predicted: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Class probabilities whose top class is `predicted`, with `confidence` on it."""
    rows = np.full((len(predicted), 10), (1 - confidence) / 9)
    rows[np.arange(len(predicted)), predicted] = confidence
    return rows
