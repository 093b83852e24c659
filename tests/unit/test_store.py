"""pipeline/store.py in-process, against real MLflow stores in temporary directories: the embedded
store's absolute artifact locations rewritten relative to the repository, so a moved checkout reads
its own; the file store and a temporary DVC workspace refused in one line."""

import sqlite3

import mlflow
import pytest

from pipeline import store
from pipeline.errors import SetupError


@pytest.fixture
def repository(tmp_path, monkeypatch):
    """A repository root with MLflow's default store in it, as the stages see it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    return tmp_path


def locations(database) -> dict[str, list[str]]:
    with sqlite3.connect(database) as connection:
        return {
            "experiments": [row[0] for row in connection.execute("SELECT artifact_location FROM experiments ORDER BY experiment_id")],
            "runs": [row[0] for row in connection.execute("SELECT artifact_uri FROM runs")],
        }


def test_absolute_locations_of_an_old_checkout_are_made_relative_and_then_left_alone(repository):
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("moved", artifact_location="file:///old/checkout/mlruns/1")
    run = client.create_run(experiment)
    with sqlite3.connect(repository / "mlflow.db") as connection:  # as MLflow recorded them in another checkout
        connection.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?",
                           (f"/old/checkout/mlruns/1/{run.info.run_id}/artifacts", run.info.run_id))

    # MLflow's Default experiment (0) was recorded at this checkout's absolute path: relative too.
    assert store.relocate_embedded_store() == 3
    assert locations(repository / "mlflow.db") == {"experiments": ["mlruns/0", "mlruns/1"], "runs": [f"mlruns/1/{run.info.run_id}/artifacts"]}
    assert store.relocate_embedded_store() == 0  # once done, nothing to do


def test_a_store_elsewhere_is_never_rewritten(tmp_path, monkeypatch):
    """Only the store in the working directory is the repository's own."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere/mlflow.db")
    mlflow.MlflowClient().create_experiment("moved", artifact_location="file:///old/checkout/mlruns/1")
    assert store.embedded_store() is None and store.relocate_embedded_store() == 0
    assert locations(tmp_path / "elsewhere/mlflow.db")["experiments"][1] == "file:///old/checkout/mlruns/1"


@pytest.mark.parametrize("uri", ["file:./mlruns", "./mlruns"])
def test_the_file_store_is_refused_naming_the_uri(repository, monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(SetupError, match=f"MLFLOW_TRACKING_URI={uri} is MLflow's file store, which has no model registry"):
        store.check_store()
    assert not (repository / "mlruns").exists()


def test_a_temporary_dvc_workspace_refuses_the_embedded_store(tmp_path, monkeypatch):
    workspace = tmp_path / ".dvc/tmp/exps/abc123"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    with pytest.raises(SetupError, match="this stage runs in a temporary DVC workspace"):
        store.check_store()
    assert not (workspace / "mlflow.db").exists()
