"""`mlflow run` on the project's entry points, in a fresh copy of the repository."""

import mlflow
import yaml

from tests.helpers import REPO_ROOT, clone, edit_params, run_in


def test_every_stage_has_an_entry_point():
    project = yaml.safe_load((REPO_ROOT / "MLproject").read_text())
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert set(project["entry_points"]) == {"main", "serve", "search", "promote", *stages}


def test_mlflow_run_keeps_its_own_run_out_of_the_training_experiment(small_preprocessed, tmp_path):
    """The stage's runs stay as `dvc repro` makes them (the variant's run top-level, its replicate's
    nested under it), tagged with the project's run, which lives in the experiment `mlflow run` names."""
    repo = clone(small_preprocessed, tmp_path / "repo")
    edit_params(repo, lambda params: params["train"].update(seeds=[0]))

    run_in(repo, "mlflow", "run", ".", "-e", "train", "-P", "variant=mlp-256-64",
           "--env-manager", "local", "--experiment-name", "mnist-mlp-projects")

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    (project,) = client.search_runs([client.get_experiment_by_name("mnist-mlp-projects").experiment_id])
    assert project.data.tags["mlflow.project.entryPoint"] == "train" and project.info.status == "FINISHED"
    training = client.get_experiment_by_name("mnist-mlp")
    runs = {run.info.run_name: run for run in client.search_runs([training.experiment_id])}
    assert sorted(runs) == ["mlp-256-64", "mlp-256-64 seed 0"], "the training runs, and nothing of the project"
    variant, replicate = runs["mlp-256-64"], runs["mlp-256-64 seed 0"]
    assert "mlflow.parentRunId" not in variant.data.tags and variant.data.tags["mlflow_project_run"] == project.info.run_id
    assert replicate.data.tags["mlflow.parentRunId"] == variant.info.run_id
    assert variant.info.status == replicate.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(variant.info.run_id, "val_accuracy")] == [1]
    assert "val_accuracy" not in project.data.metrics  # nothing of the stage landed in the project's run
