"""A team's set-up: the unchanged pipeline logging to an `mlflow server` on a real PostgreSQL."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.helpers import (
    assert_answers_are_the_ensembles, clone, commit, edit_params, ensemble_probabilities, small_search, stages_run, user_env,
    wait_until,
)
from tests.servers import free_port, tracking_server



def postgres_tool(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} not found: `apt-get install postgresql` (.ci/run does)")
    return found


@pytest.fixture(scope="module")
def postgres_uri():
    """A throw-away PostgreSQL cluster on 127.0.0.1 (as the `postgres` user when we are root)."""
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="mnist-pg-"))
    if as_owner:
        shutil.chown(home, "postgres")
    data, port = home / "data", free_port()
    subprocess.run([*as_owner, postgres_tool("initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow", "-E", "UTF8"],
                   check=True, capture_output=True)
    options = f"-h 127.0.0.1 -p {port} -k {home}"  # loopback and a private socket directory only
    subprocess.run([*as_owner, postgres_tool("pg_ctl"), "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run([*as_owner, postgres_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
                       check=True, capture_output=True)
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_owner, postgres_tool("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_server(postgres_uri, tmp_path_factory):
    """`mlflow server` with PostgreSQL as backend store and a local directory as proxied artifact store."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    with tracking_server(postgres_uri, artifacts) as url:
        yield url, artifacts


def runs_in(client, experiment_name: str) -> dict[str, object]:
    """The runs of an experiment on the server, by id (none if it does not exist yet)."""
    experiment = client.get_experiment_by_name(experiment_name)
    return {run.info.run_id: run for run in client.search_runs([experiment.experiment_id])} if experiment else {}


def test_the_pipeline_logs_everything_to_the_shared_server(small_preprocessed, tmp_path, shared_server):
    """What this repro adds to the team's server (other tests share it, in any order)."""
    url, artifacts = shared_server
    client = mlflow.MlflowClient(tracking_uri=url)
    before = {name: set(runs_in(client, name)) for name in ("mnist-mlp", "mnist-mlp-evaluation")}
    versions_before = {version.version for version in client.search_model_versions("name = 'mnist-mlp'")}
    repo = clone(small_preprocessed, tmp_path / "repo")  # two variants, one epoch, two seeds; nothing trained

    # A teammate's URI with credentials in it (the server here ignores them): never shown or stored.
    with_credentials = url.replace("http://", "http://teammate:s3cret-pw@")
    env = user_env(MLFLOW_TRACKING_URI=with_credentials)
    result = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert not (repo / "mlflow.db").exists() and not (repo / "mlruns").exists()  # nothing local

    new = [run for run_id, run in runs_in(client, "mnist-mlp").items() if run_id not in before["mnist-mlp"]]
    runs = {run.info.run_name: run for run in new}
    replicates = {f"{variant} seed {seed}" for variant in ("mlp-256-64", "mlp-256-64-bn") for seed in (0, 1)}
    assert len(new) == 6 and set(runs) == {"mlp-256-64", "mlp-256-64-bn", *replicates}
    evaluations = [run for run_id, run in runs_in(client, "mnist-mlp-evaluation").items() if run_id not in before["mnist-mlp-evaluation"]]
    assert [run.info.run_name for run in evaluations] == ["evaluate"]
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    for variant in ("mlp-256-64", "mlp-256-64-bn"):
        run = runs[variant]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
        assert [m.step for m in client.get_metric_history(runs[f"{variant} seed 1"].info.run_id, "val_accuracy")] == [1]
        assert {"weights.png", "curves.png", "model_summary.txt"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        version = client.get_model_version_by_alias("mnist-mlp", variant)
        assert version.run_id == run.info.run_id
        assert "s3cret-pw" not in repr(run.data.params) + repr(run.data.tags) + repr(version.tags)
    table = pd.read_csv(repo / "reports/comparison.csv")
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == table["variant"][0]
    assert len({version.version for version in client.search_model_versions("name = 'mnist-mlp'")} - versions_before) == 2
    assert any(artifacts.rglob("weights.png"))  # the artifacts went through the server to its store
    assert any(artifacts.rglob("MLmodel"))  # and so did the logged models


def quick_two_variant_copy(small_preprocessed: Path, destination: Path) -> Path:
    """Two one-epoch variants, one seed, committed: `dvc exp run --queue` and `--temp` run a commit. Its
    DVC cache holds the run of download and preprocess, which the temporary workspaces restore."""
    repo = clone(small_preprocessed, destination)
    edit_params(repo, lambda params: params["train"].update(seeds=[0]))
    commit(repo, "quick")
    return repo


def test_a_temporary_dvc_workspace_refuses_the_embedded_store(small_preprocessed, tmp_path):
    repo = quick_two_variant_copy(small_preprocessed, tmp_path / "repo")
    result = subprocess.run(["dvc", "exp", "run", "--temp"], cwd=repo, env=user_env(), capture_output=True, text=True)
    assert result.returncode != 0
    assert "MLFLOW_TRACKING_URI: this stage runs in a temporary DVC workspace" in result.stdout + result.stderr


def test_queued_experiments_run_in_two_workers_against_the_server(small_preprocessed, tmp_path, shared_server):
    url, _ = shared_server
    repo = quick_two_variant_copy(small_preprocessed, tmp_path / "repo")
    client = mlflow.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("mnist-mlp")
    before = {run.info.run_id for run in client.search_runs([experiment.experiment_id])} if experiment else set()
    evaluation = client.get_experiment_by_name("mnist-mlp-evaluation")
    evaluated_before = {run.info.run_id for run in client.search_runs([evaluation.experiment_id])} if evaluation else set()

    env = user_env(MLFLOW_TRACKING_URI=url)
    for seed in (1, 2):
        subprocess.run(["dvc", "exp", "run", "--queue", "-S", f"train.seeds=[{seed}]"], cwd=repo, env=env, check=True, capture_output=True)
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=env, check=True, capture_output=True)

    def finished() -> str | None:
        status = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True, text=True).stdout
        return None if "Queued" in status or "Running" in status else status

    status = wait_until(finished, 600, "the queued experiments to finish", poll=1)
    assert status.count("Success") == 2, status

    experiment = client.get_experiment_by_name("mnist-mlp")
    new = [run for run in client.search_runs([experiment.experiment_id]) if run.info.run_id not in before]
    names = sorted(run.info.run_name for run in new)
    assert names == sorted(["mlp-256-64", "mlp-256-64-bn"] * 2 + [f"{v} seed {s}" for v in ("mlp-256-64", "mlp-256-64-bn") for s in (1, 2)])
    evaluations = client.search_runs([client.get_experiment_by_name("mnist-mlp-evaluation").experiment_id])
    assert [run.info.run_name for run in evaluations if run.info.run_id not in evaluated_before] == ["evaluate", "evaluate"]
    assert {run.info.status for run in new} == {"FINISHED"}
    seeds = sorted((run.info.run_name, run.data.params["train.seeds"]) for run in new if run.info.run_name in ("mlp-256-64", "mlp-256-64-bn"))
    assert seeds == [("mlp-256-64", "[1]"), ("mlp-256-64", "[2]"), ("mlp-256-64-bn", "[1]"), ("mlp-256-64-bn", "[2]")]


def test_a_teammate_pulls_the_trained_models_from_a_dvc_remote_and_serves_the_champion_without_retraining(small_trained, tmp_path, canonical_arrays, monkeypatch):
    """docs/how-to.md's remote, with a local folder as the remote: push from a trained checkout; a
    git clone (no DVC cache, no MLflow store) pulls, and `dvc repro` retrains nothing and registers
    the pulled models in its new store, whose @champion answers as the members do."""
    repo = clone(small_trained, tmp_path / "mine")
    env = user_env()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]

    def run(*command, cwd):
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    run("dvc", "remote", "add", "-d", "team", str(tmp_path / "remote"), cwd=repo)
    run(*git, "commit", "-qam", "the team's remote", cwd=repo)
    run("dvc", "push", cwd=repo)

    teammate = tmp_path / "theirs"
    run("git", "clone", "-q", str(repo), str(teammate), cwd=tmp_path)
    assert not (teammate / "mlflow.db").exists() and not (teammate / "models/mlp-256-64/seed-1.keras").exists()
    run("dvc", "pull", cwd=teammate)
    for name in ("data/processed/train.npz", "models/mlp-256-64/seed-1.keras", "reports/history/mlp-256-64-bn/seed-0.csv"):
        assert (teammate / name).read_bytes() == (repo / name).read_bytes(), name
    repro = run("dvc", "repro", cwd=teammate)
    assert stages_run(repro) == ["register"], "nothing trained or evaluated again"
    assert run("git", "status", "--porcelain", cwd=teammate) == ""

    champion = json.loads((teammate / "reports/served.json").read_text())["champion"]
    monkeypatch.chdir(teammate)  # artifact locations are relative to the repository root
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{teammate}/mlflow.db")
    images = canonical_arrays["x_test"][:20].reshape(20, 784)
    answer = mlflow.pyfunc.load_model("models:/mnist-mlp@champion").predict(images)
    expected = ensemble_probabilities([repo / f"models/{champion}/seed-{seed}.keras" for seed in (0, 1)], images)
    assert_answers_are_the_ensembles(answer["digit"], answer["probabilities"].tolist(), expected)


def test_two_workers_share_one_study_on_postgresql_and_run_each_trial_once(small_preprocessed, tmp_path, postgres_uri, shared_server):
    """`make search`'s worker started twice, as on two hosts, against one PostgreSQL (a database of its
    own: Optuna's and MLflow's schemas both keep an alembic_version table) and the team's MLflow server."""
    import optuna
    import psycopg
    from optuna.trial import TrialState

    url, _ = shared_server
    with psycopg.connect(postgres_uri, autocommit=True) as connection:
        connection.execute("CREATE DATABASE optuna")
    storage = postgres_uri.rsplit("/", 1)[0] + "/optuna"
    repo = clone(small_preprocessed, tmp_path / "repo")

    def shared_study(params):
        small_search(params, study="shared", trials=6, epochs=(2, 2))
        params["search"]["pruner"]["startup_trials"] = 6  # every trial finishes: each must run exactly once

    edit_params(repo, shared_study)
    env = user_env(MLFLOW_TRACKING_URI=url, OPTUNA_STORAGE=storage)
    workers = [subprocess.Popen([sys.executable, "-m", "pipeline.search"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    tails = ["\n".join((stdout + stderr).splitlines()[-15:]) for stdout, stderr in outputs]  # where each stopped
    assert [worker.returncode for worker in workers] == [0, 0], "\n---\n".join(tails)

    trials = optuna.load_study(study_name="shared", storage=storage.replace("postgresql://", "postgresql+psycopg://")).trials
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    assert len(complete) == 6
    # Two workers finishing at the same instant may both start one more: it is refused, never run.
    assert all("beyond the budget" in trial.user_attrs["failure"] for trial in trials if trial.state != TrialState.COMPLETE)
    assert len({trial.user_attrs["worker"] for trial in complete}) == 2  # both worked

    client = mlflow.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("mnist-mlp-search")
    runs = client.search_runs([experiment.experiment_id], "tags.optuna_study = 'shared'")
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = sorted(int(run.data.tags["optuna_trial"]) for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id)
    assert children == sorted(trial.number for trial in complete)  # each trial once, none lost
    assert {run.data.tags["state"] for run in runs if "mlflow.parentRunId" in run.data.tags} == {"complete"}
