"""`make search`: the search space validated, trials run through the project's training code,
tracked in MLflow, pruned, promoted into params.yaml and confirmed by `dvc repro`; a killed worker
and an unreachable storage. Real Optuna storage, real MLflow store, real `dvc repro`."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import tensorflow as tf
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from pipeline import training
from pipeline.config import VariantSpec, load_params
from pipeline.data import load_split
from pipeline.search import candidate_spec, design_name, trial_params
from tests.helpers import clone, dvc, edit_params, small_search, stage_lines, user_env, wait_until
from tests.servers import free_port

# Three designs, fixed so that what happens to each is known: a slow learner that always finishes
# (the pruner's first trial), a fast one that beats it, and a slow one that the median rule stops.
DESIGN = {"depth": 1, "log2_width_1": 6, "batch_norm": False, "dropout": 0.0, "input_dropout": 0.0,
          "max_norm": None, "batch_size": 128, "epochs": 2, "initializer": "he_normal",
          "input_noise": 0.0, "hidden_noise": 0.0, "lr_schedule": "constant", "vat_epsilon": 0.0}
TRIALS = [{**DESIGN, "learning_rate": 0.0001}, {**DESIGN, "learning_rate": 0.01, "max_norm": 3.0, "input_dropout": 0.1},
          {**DESIGN, "learning_rate": 0.0001, "log2_width_1": 5}]


def run_search(repo: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.search"], cwd=repo, env=user_env(**env), capture_output=True, text=True)


def local_study(repo: Path, name: str = "test-search") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{repo}/data/search/optuna.db")


def search_runs(repo: Path) -> list:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-mlp-search")
    return client, client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def searched(small_trained, tmp_path_factory):
    """A clone of the small trained repository, searched (three trials of two-epoch designs), its
    test split moved away while the search runs: the search cannot have read it. Read-only: tests
    that change it clone it."""
    repo = clone(small_trained, tmp_path_factory.mktemp("search") / "repo")
    edit_params(repo, small_search)
    dvc("repro", cwd=repo)  # validate (params.yaml changed) and register's check
    storage = f"sqlite:///{repo}/data/search/optuna.db"
    (repo / "data/search").mkdir(parents=True)
    study = optuna.create_study(study_name="test-search", storage=storage, direction="maximize")
    for design in TRIALS:
        study.enqueue_trial(design)
    test_split = repo / "data/processed/test.npz"
    test_split.rename(repo / "test.npz.away")
    try:
        result = run_search(repo)
    finally:
        (repo / "test.npz.away").rename(test_split)
    assert result.returncode == 0, result.stdout + result.stderr
    return repo, result.stdout


def test_the_search_runs_its_trials_and_the_pruner_stops_the_hopeless_one(searched):
    repo, output = searched
    trials = local_study(repo).trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[1].value > trials[0].value  # the fast learner beats the slow one
    # The pruner's steps are tenths of a trial's own epochs: epoch 1 of 2 is step 5.
    assert sorted(trials[2].intermediate_values) == [5]  # stopped after its first epoch of two
    assert trials[2].intermediate_values[5] < np.median([trials[0].intermediate_values[5], trials[1].intermediate_values[5]])
    assert "pruned at epoch 1" in output


def test_a_trial_trains_through_the_project_code_with_the_search_seeds(searched):
    """Its score is its seeds' mean validation accuracy at the last epoch, as train_group computes it."""
    repo, _ = searched
    trial = local_study(repo).trials[1]
    params = load_params(repo / "params.yaml")
    design = {key: value for key, value in trial.params.items() if key not in ("depth", "log2_width_1")}
    spec = candidate_spec(params, {**design, "hidden_layers": [2 ** trial.params["log2_width_1"]]})
    assert spec == VariantSpec.model_validate(trial.user_attrs["spec"])
    assert spec.max_norm == 3.0 and spec.input_dropout == 0.1 and spec.init_stddev is None
    name = design_name(spec, trial.number)
    assert name == trial.user_attrs["variant"] == "mlp-64-in10-norm3-t1"
    splits = [load_split(repo / f"data/processed/{split}.npz") for split in ("train", "validation")]
    trained = training.train_group(trial_params(params, name, spec), name, [100, 101], tf.distribute.get_strategy(), *splits, verbose=0)
    expected = np.mean([history["val_accuracy"][-1] for _, history in trained.values()])
    assert trial.value == pytest.approx(expected, abs=1e-6)


def test_each_trial_is_a_child_run_of_the_search_with_its_state_and_epochs(searched, monkeypatch):
    repo, _ = searched
    monkeypatch.chdir(repo)  # the store's artifacts are where it records them: relative to the repository
    client, runs = search_runs(repo)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = {int(run.data.tags["optuna_trial"]): run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    trials = local_study(repo).trials
    assert sorted(children) == [trial.number for trial in trials]
    expected = {TrialState.COMPLETE: ("complete", "FINISHED"), TrialState.PRUNED: ("pruned", "KILLED")}
    for trial in trials:
        child = children[trial.number]
        assert (child.data.tags["state"], child.info.status) == expected[trial.state]
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert {5 * m.step: m.value for m in history} == pytest.approx(trial.intermediate_values)  # 2 epochs: five tenths each
        assert child.data.params["hidden_layers"] == str(2 ** trial.params["log2_width_1"])
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(trials[1].value)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"trials.csv", "front.csv", "front.png", "optimization_history.png", "param_importances.png", "intermediate_values.png"}


def test_the_trials_table_lists_every_trial_best_first(searched):
    repo, _ = searched
    table = pd.read_csv(repo / "reports/search/trials.csv")
    assert table["trial"].tolist() == [1, 0, 2]
    assert table["state"].tolist() == ["complete", "complete", "pruned"]
    assert table["val_accuracy"][:2].tolist() == pytest.approx([trial.value for trial in local_study(repo).trials[1::-1]])
    # The best trial is on the accuracy-cost front whatever its time: nothing is better than it.
    front = pd.read_csv(repo / "reports/search/front.csv")
    assert table["variant"][0] in front["variant"].tolist() and set(front["state"]) == {"complete"}


def test_the_search_leaves_the_pipeline_as_it_was(searched):
    repo, _ = searched
    assert dvc("status", cwd=repo) == "register:\n\talways changed\n"  # register runs on every repro, by design


def test_promotion_writes_the_best_designs_as_variants_and_dvc_repro_confirms_them(searched, tmp_path):
    repo = clone(searched[0], tmp_path / "repo")
    before = (repo / "params.yaml").read_text()
    result = subprocess.run([sys.executable, "-m", "pipeline.promote", "--top", "2"], cwd=repo, env=user_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    after = (repo / "params.yaml").read_text()
    kept = [line for line in before.splitlines() if line != "promoted: {}"]
    remaining = iter(after.splitlines())
    assert all(line in remaining for line in kept)  # every line, comments too, in their order
    trials = local_study(repo).trials
    params = load_params(repo / "params.yaml")
    promoted = {trial.user_attrs["variant"]: trial for trial in (trials[1], trials[0])}  # best first, complete only
    assert list(params.promoted) == list(promoted)
    for name, trial in promoted.items():
        assert params.variants[name] == VariantSpec.model_validate(trial.user_attrs["spec"])
        assert params.promoted[name].trial == trial.number and params.promoted[name].val_accuracy == round(trial.value, 6)
    again = subprocess.run([sys.executable, "-m", "pipeline.promote", "--top", "2"], cwd=repo, env=user_env(), capture_output=True, text=True)
    assert (repo / "params.yaml").read_text() == after and "a variant already" in again.stdout

    output = dvc("repro", cwd=repo)
    assert sorted(name for name in promoted) == sorted(
        stage.removeprefix("train@") for stage in re.findall(r"Running stage '(train@[^']+)'", output)
    )
    table = pd.read_csv(repo / "reports/promoted.csv").set_index("variant")
    comparison = pd.read_csv(repo / "reports/comparison.csv").set_index("variant")
    for name, trial in promoted.items():
        replicates = json.loads((repo / f"reports/train/{name}/replicates.json").read_text())["replicates"]
        confirmed = np.mean([replicate["val_accuracy"] for replicate in replicates])
        assert [replicate["seed"] for replicate in replicates] == [0, 1]
        assert table.loc[name, "search_val_accuracy"] == pytest.approx(trial.value, abs=1e-6)
        assert table.loc[name, "val_accuracy_mean"] == pytest.approx(confirmed, abs=1e-5)
        assert table.loc[name, "overstatement"] == pytest.approx(trial.value - confirmed, abs=1e-5)
        assert name in comparison.index
    assert "## Promoted from the search" in (repo / "reports/comparison.md").read_text()


def heartbeat_age(repo: Path, study: str, trial: int) -> float:
    """Seconds since the trial's worker last beat, by the clock Optuna compares it with (the database's)."""
    with sqlite3.connect(repo / "data/search/optuna.db") as connection:
        (age,) = connection.execute(
            "SELECT (julianday('now') - julianday(heartbeat)) * 86400 FROM trial_heartbeats "
            "JOIN trials USING (trial_id) JOIN studies USING (study_id) WHERE study_name = ? AND trials.number = ?",
            (study, trial),
        ).fetchone()
    return age


def test_a_worker_killed_mid_trial_leaves_it_failed_and_the_next_worker_runs_it_again(searched, tmp_path):
    repo = clone(searched[0], tmp_path / "repo")

    def two_trials_never_pruned(params):
        small_search(params, study="killed", trials=2, epochs=(30, 30), heartbeat_seconds=1)
        params["search"]["pruner"]["startup_trials"] = 5

    edit_params(repo, two_trials_never_pruned)
    worker = subprocess.Popen([sys.executable, "-m", "pipeline.search"], cwd=repo, env=user_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def reported_an_epoch():
        try:
            trials = local_study(repo, "killed").trials
        except KeyError:  # no study yet
            return False
        return bool(trials and trials[0].intermediate_values)  # mid-trial: an epoch reported, many to go

    wait_until(reported_an_epoch, 300, "trial 0's first epoch", poll=0.05)
    os.kill(worker.pid, signal.SIGKILL)  # no Python cleanup runs: as a lost host or the OOM killer
    worker.wait()
    assert local_study(repo, "killed").trials[0].state == TrialState.RUNNING
    # The next worker fails the trial once its heartbeat is older than the grace period (2 x search.heartbeat_seconds).
    grace = 2 * load_params(repo / "params.yaml").search.heartbeat_seconds
    wait_until(lambda: heartbeat_age(repo, "killed", 0) > grace, 60, "the killed worker's heartbeat to go stale")
    result = run_search(repo)
    assert result.returncode == 0, result.stderr
    assert "trial 0 was abandoned by its worker" in result.stdout
    trials = local_study(repo, "killed").trials
    assert [trial.state for trial in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[1]) == 0 and trials[1].params == trials[0].params
    client, runs = search_runs(repo)
    killed = next(run for run in runs if run.data.tags.get("optuna_study") == "killed" and run.data.tags.get("optuna_trial") == "0")
    assert killed.info.status == "FAILED" and "stopped answering" in killed.data.tags["mlflow.note.content"]


def test_three_workers_started_together_on_a_new_checkout_each_train_a_design_of_their_own(small_preprocessed, tmp_path):
    """No MLflow store and no study yet: the three create them once between them, and draw three designs."""
    repo = clone(small_preprocessed, tmp_path / "repo")
    assert not (repo / "mlflow.db").exists() and not (repo / "data/search").exists()
    edit_params(repo, lambda params: small_search(params, study="together", trials=3, epochs=(1, 1)))
    workers = [subprocess.Popen([sys.executable, "-m", "pipeline.search"], cwd=repo, env=user_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for worker, (stdout, stderr) in [(worker, worker.communicate(timeout=600)) for worker in workers]:
        assert worker.returncode == 0 and "Traceback" not in stderr, stdout + stderr
    scored = [trial for trial in local_study(repo, "together").trials if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(scored) == 3
    assert len({json.dumps(trial.user_attrs["spec"], sort_keys=True) for trial in scored}) == 3, [t.user_attrs["spec"] for t in scored]
    assert not [trial for trial in scored if "same_design_as" in trial.user_attrs]


def test_an_unreachable_storage_is_one_line_before_any_work(fresh_repo, tmp_path):
    """A PostgreSQL that is not there (a closed port), with a password in its URL: one line, no password."""
    repo = clone(fresh_repo, tmp_path / "repo")
    url = f"postgresql://teammate:s3cret-pw@127.0.0.1:{free_port()}/optuna"
    result = run_search(repo, OPTUNA_STORAGE=url)
    assert result.returncode == 1
    lines = stage_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"search: cannot open the study's storage postgresql+psycopg://127.0.0.1:{url.rsplit(':', 1)[1]} (from OPTUNA_STORAGE): ")
    assert "Connection refused" in lines[0] and "s3cret-pw" not in result.stdout + result.stderr
    assert not (repo / "mlflow.db").exists()  # nothing recorded, nothing read
