"""`mlflow run` on the project's entry points, in a fresh copy of the repository."""

import mlflow
import yaml

from tests.helpers import REPO_ROOT, clone, edit_params, run_in


def test_every_stage_has_an_entry_point():
    project = yaml.safe_load((REPO_ROOT / "MLproject").read_text())
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert set(project["entry_points"]) == {"main", "serve", "search", "promote", *stages}


def test_mlflow_run_makes_the_stage_run_a_child_of_its_own(small_preprocessed, tmp_path):
    repo = clone(small_preprocessed, tmp_path / "repo")
    edit_params(repo, lambda params: params["train"].update(seeds=[0]))

    run_in(repo, "mlflow", "run", ".", "-e", "train", "-P", "variant=mlp-256-64",
           "--env-manager", "local", "--experiment-name", "mnist-mlp")

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-mlp")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    child, replicate = runs.pop("mlp-256-64"), runs.pop("mlp-256-64 seed 0")
    (parent,) = runs.values()  # the run `mlflow run` made, and no other
    assert parent.data.tags["mlflow.project.entryPoint"] == "train"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert replicate.data.tags["mlflow.parentRunId"] == child.info.run_id
    assert child.info.status == parent.info.status == replicate.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [1]
    assert "val_accuracy" not in parent.data.metrics  # nothing of the stage landed in the parent
