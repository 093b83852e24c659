"""Workspaces for the in-process tests of the train and evaluate stages: a repository-like directory
with a small processed dataset (600 images, 2 epochs, seeds 0 and 1) and its own MLflow store."""

import shutil

import pytest

from pipeline.config import load_params
from pipeline.evaluate import evaluate
from pipeline.train import train
from tests.helpers import REPO_ROOT, edit_params, keep_variants, only_variants, small_workspace

SEEDS = [0, 1]
TRAINED = ("mlp-256-64", "mlp-256-64-bn", "mlp-256-256-he-dropout")


def enter(directory, monkeypatch) -> None:
    """Work in `directory` as a stage does: its working directory, its own store."""
    monkeypatch.chdir(directory)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{directory}/mlflow.db")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


@pytest.fixture(scope="session")
def processed_workspace(tmp_path_factory, default_params, canonical_npz):
    """The processed data and its params, made once. Read-only: tests work in a copy (`workspace`)."""
    root = tmp_path_factory.mktemp("workspace") / "processed"
    return root, small_workspace(root, default_params, canonical_npz, subset=600, max_epochs=2, seeds=SEEDS)


def work_in_copy(prepared, destination, monkeypatch):
    """Copy a prepared (root, params) workspace to `destination` and work there (its store's artifact
    locations are relative, so the copy reads its own): its params."""
    root, params = prepared
    shutil.copytree(root, destination, dirs_exist_ok=True)
    enter(destination, monkeypatch)
    return params


@pytest.fixture(scope="session")
def trained_workspace(processed_workspace, tmp_path_factory):
    """processed_workspace after train() of TRAINED, in-process, into its own store. Read-only."""
    root = tmp_path_factory.mktemp("workspace") / "trained"
    with pytest.MonkeyPatch.context() as patch:
        params = work_in_copy(processed_workspace, root, patch)
        for variant in TRAINED:
            train(params, variant)
    trained = only_variants(params, *TRAINED)
    # Its params.yaml, for the stages that read it themselves (register).
    shutil.copy2(REPO_ROOT / "params.yaml", root / "params.yaml")

    def as_trained(raw):
        raw["data"]["subset"], raw["train"]["max_epochs"], raw["train"]["seeds"] = 600, 2, SEEDS
        keep_variants(raw, *TRAINED)

    edit_params(root, as_trained)
    assert load_params(root / "params.yaml") == trained
    return root, trained


@pytest.fixture(scope="session")
def evaluated_workspace(trained_workspace, tmp_path_factory):
    """trained_workspace after evaluate(): its reports, @champion. Read-only."""
    root = tmp_path_factory.mktemp("workspace") / "evaluated"
    with pytest.MonkeyPatch.context() as patch:
        evaluate(work_in_copy(trained_workspace, root, patch))
    return root, trained_workspace[1]


@pytest.fixture
def workspace(processed_workspace, tmp_path, monkeypatch):
    """A copy of processed_workspace to work in: its params (all ten variants, none trained)."""
    return work_in_copy(processed_workspace, tmp_path, monkeypatch)


@pytest.fixture
def trained(trained_workspace, tmp_path, monkeypatch):
    """A copy of trained_workspace to work in: its params, the TRAINED variants only."""
    return work_in_copy(trained_workspace, tmp_path, monkeypatch)


@pytest.fixture
def evaluated(evaluated_workspace, tmp_path, monkeypatch):
    """A copy of evaluated_workspace to work in: its params."""
    return work_in_copy(evaluated_workspace, tmp_path, monkeypatch)
