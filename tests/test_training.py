"""Training, tracking and evaluation in-process, against a temporary MLflow sqlite store."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import confusion_matrix

from pipeline import registry, tracking
from pipeline.data import load_split, to_features
from pipeline.errors import SetupError
from pipeline.evaluate import evaluate
from pipeline.train import train
from tests.servers import free_port

from conftest import REPO_ROOT, small_workspace, user_env

VARIANT = "mlp-256-64-bn"
SEEDS = [0, 1]


@pytest.fixture
def workspace(tmp_path, monkeypatch, canonical_npz, default_params):
    """A repository-like working directory with a small processed dataset and its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return small_workspace(tmp_path, default_params, canonical_npz, subset=600, max_epochs=2, seeds=SEEDS)


def only_variants(params, *names):
    return params.model_copy(update={"variants": {name: params.variants[name] for name in names}})


def runs_by_name(client) -> dict:
    experiment = client.get_experiment_by_name("mnist-mlp")
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def test_a_variant_trains_a_replicate_per_seed_saved_and_tracked(workspace, tmp_path):
    metrics = train(workspace, VARIANT)

    saved = json.loads((tmp_path / f"reports/train/{VARIANT}/replicates.json").read_text())
    flat = json.loads((tmp_path / f"reports/train/{VARIANT}/metrics.json").read_text())  # what DVC shows: a few flat numbers
    assert all(isinstance(value, (int, float)) for value in flat.values()) and flat["finished"] == 2 and flat["diverged"] == 0
    assert flat["val_accuracy"] == saved["val_accuracy"]
    assert saved == metrics and saved["seeds"] == SEEDS and saved["epochs"] == 2 and saved["params"] == 219_338
    replicates = pd.DataFrame(saved["replicates"]).set_index("seed")
    assert saved["val_accuracy"] == pytest.approx(replicates["val_accuracy"].mean())
    assert saved["val_accuracy_std"] == pytest.approx(replicates["val_accuracy"].std(ddof=1))
    assert saved["train_seconds"] == pytest.approx(replicates["train_seconds"].sum(), abs=0.02)
    histories = {seed: pd.read_csv(tmp_path / f"reports/history/{VARIANT}/seed-{seed}.csv") for seed in SEEDS}
    for seed, history in histories.items():
        assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
        assert history["epoch"].tolist() == [1, 2]
        assert history["val_accuracy"].iloc[-1] == pytest.approx(replicates.loc[seed, "val_accuracy"])
        assert (tmp_path / f"models/{VARIANT}/seed-{seed}.keras").is_file()
    assert not histories[0]["loss"].equals(histories[1]["loss"])  # two seeds, two trajectories

    client = mlflow.MlflowClient()
    runs = runs_by_name(client)
    assert set(runs) == {VARIANT, f"{VARIANT} seed 0", f"{VARIANT} seed 1"}
    parent = runs[VARIANT]
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    p = parent.data.params
    assert (p["hidden_layers"], p["batch_norm"], p["dropout"], p["init_stddev"]) == ("256-64", "True", "0.0", "[0.039, 0.55]")
    assert (p["depth"], p["width"]) == ("2", "256")  # numeric: they make parallel-coordinates axes
    assert (p["param_count"], p["data.subset"], p["train.max_epochs"], p["train.seeds"]) == ("219338", "600", "2", "[0, 1]")
    assert parent.data.tags["dvc_stage"] == f"train@{VARIANT}" and len(parent.data.tags["params_hash"]) == 16
    # The parent: per-epoch mean and standard deviation over the replicates, final aggregates, figures.
    stacked = pd.concat(histories.values())
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        means = client.get_metric_history(parent.info.run_id, name)
        spreads = client.get_metric_history(parent.info.run_id, f"{name}_std")
        assert [m.step for m in means] == [m.step for m in spreads] == [1, 2]
        assert [m.value for m in means] == pytest.approx(stacked.groupby("epoch")[name].mean().tolist())
        assert [m.value for m in spreads] == pytest.approx(stacked.groupby("epoch")[name].std().tolist())
    # The runs table shows each metric's last step: the final aggregates, with nothing logged twice.
    assert parent.data.metrics["val_accuracy"] == pytest.approx(metrics["val_accuracy"])
    assert parent.data.metrics["val_accuracy_std"] == pytest.approx(metrics["val_accuracy_std"])
    assert parent.data.metrics["train_seconds"] == metrics["train_seconds"]
    assert not [name for run in runs.values() for name in run.data.metrics if name.startswith("final_")]
    assert {"weights.png", "curves.png", "model_summary.txt"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/model_summary.txt")
    assert "Total params: 219,338" in summary and "Optimizer" not in summary  # the network's, not Adam's
    inputs = {d.dataset.name: [t.value for t in d.tags] for d in parent.inputs.dataset_inputs}
    assert inputs == {"mnist-training": ["training"], "mnist-validation": ["validation"]}
    # Each child: its seed, its per-epoch metrics, its final metrics and its model file.
    for seed in SEEDS:
        child = runs[f"{VARIANT} seed {seed}"]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["seed"] == str(seed) and child.data.params["hidden_layers"] == "256-64"
        steps = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in steps] == [1, 2]
        assert [m.value for m in steps] == pytest.approx(histories[seed]["val_accuracy"].tolist())
        assert child.data.metrics["val_accuracy"] == pytest.approx(replicates.loc[seed, "val_accuracy"])
        best = histories[seed]["val_accuracy"].idxmax()
        assert child.data.metrics["best_val_accuracy"] == pytest.approx(histories[seed]["val_accuracy"][best])
        assert child.data.metrics["best_epoch"] == histories[seed]["epoch"][best] == replicates.loc[seed, "best_epoch"]
        assert child.data.metrics["train_seconds"] == replicates.loc[seed, "train_seconds"]
        assert f"seed-{seed}.keras" in {a.path for a in client.list_artifacts(child.info.run_id)}

    # One registered version: the seed ensemble, its code what serving runs, its pins what that imports.
    version = client.get_model_version_by_alias("mnist-mlp", VARIANT)
    assert int(version.version) == 1 and version.run_id == parent.info.run_id
    assert json.loads(version.tags["seeds"]) == SEEDS
    model_files = [tmp_path / f"models/{VARIANT}/seed-{seed}.keras" for seed in SEEDS]
    assert version.tags["models_md5"] == registry.models_md5(model_files)
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/mnist-mlp@{VARIANT}"))
    assert sorted(p.name for p in (model_dir / "code/pipeline").iterdir()) == sorted(registry.SERVED_FILES)
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert sorted(requirements) == sorted(registry.serving_requirements())
    assert version.tags["serving_code_md5"] == registry.serving_code_md5()

    # The served ensemble answers raw pixels with exactly the mean of its members' probabilities.
    x_val, y_val = load_split(tmp_path / "data/processed/validation.npz")
    served = mlflow.pyfunc.load_model(f"models:/mnist-mlp@{VARIANT}")
    answer = served.predict(np.rint(x_val[:200] * 255).astype(np.float64))
    assert list(answer.columns) == ["digit", "probabilities"]
    members = [keras.saving.load_model(path, compile=False) for path in model_files]
    features = to_features(np.rint(x_val[:200] * 255))
    expected = np.mean(np.stack([member.predict_on_batch(features) for member in members]), axis=0)
    np.testing.assert_array_equal(np.array(answer["probabilities"].tolist(), dtype=np.float32), expected)
    np.testing.assert_array_equal(answer["digit"].to_numpy(), expected.argmax(axis=1))
    assert (answer["digit"].to_numpy() == y_val[:200].argmax(axis=1)).mean() > 0.5


def test_the_same_params_give_the_same_metrics(workspace, tmp_path):
    first = train(workspace, "mlp-256-64-bn-dropout")
    first_history = (tmp_path / "reports/history/mlp-256-64-bn-dropout/seed-1.csv").read_text()
    second = train(workspace, "mlp-256-64-bn-dropout")
    second_history = (tmp_path / "reports/history/mlp-256-64-bn-dropout/seed-1.csv").read_text()
    for metrics in (first, second):
        metrics.pop("train_seconds")
        for replicate in metrics["replicates"]:
            replicate.pop("train_seconds")
    assert first == second
    assert first_history == second_history


def test_evaluate_compares_replicates_and_restores_a_lost_store(workspace, tmp_path, monkeypatch, capsys):
    params = only_variants(workspace, "mlp-256-64", "mlp-256-64-bn", "mlp-256-256-he-dropout")
    for variant in params.variants:
        train(params, variant)
    capsys.readouterr()
    champion = evaluate(params)
    printed = capsys.readouterr().out

    table = pd.read_csv(tmp_path / "reports/comparison.csv")
    assert list(table.columns) == [
        "variant", "hidden_layers", "batch_norm", "dropout", "params", "epochs", "seeds", "failed_seeds",
        "ensemble_val_accuracy", "ensemble_val_loss", "ensemble_test_accuracy", "ensemble_test_ci_low", "ensemble_test_ci_high",
        "ensemble_test_nll", "ensemble_test_ece", "p_vs_champion", "tied_with_champion",
        "val_accuracy_mean", "val_accuracy_std", "test_accuracy_mean", "test_accuracy_std",
        "test_accuracy_ci_low", "test_accuracy_ci_high", "test_loss_mean", "prob_champion_better", "train_seconds",
    ]
    # The champion is the best served model: the seed ensemble with the best validation accuracy,
    # computed here from the member files with plain Keras.
    x_val, y_val = load_split(tmp_path / "data/processed/validation.npz")
    served_val = {}
    for variant in params.variants:
        members = [keras.saving.load_model(tmp_path / f"models/{variant}/seed-{seed}.keras", compile=False) for seed in SEEDS]
        served_val[variant] = float(np.mean(np.mean([m.predict(x_val, verbose=0) for m in members], axis=0).argmax(axis=1) == y_val.argmax(axis=1)))
    rows = table.set_index("variant")
    for variant, accuracy in served_val.items():
        assert rows.loc[variant, "ensemble_val_accuracy"] == pytest.approx(accuracy, abs=1e-6)  # the CSV keeps 6 digits
    assert champion == table["variant"][0] == max(served_val, key=served_val.get)
    # Its confusion data for DVC's confusion template: the champion's ensemble on the test set, as
    # scikit-learn's confusion_matrix counts it from the member files' own predictions.
    x_test, y_test = load_split(tmp_path / "data/processed/test.npz")
    members = [keras.saving.load_model(tmp_path / f"models/{champion}/seed-{seed}.keras", compile=False) for seed in SEEDS]
    predicted = np.mean([m.predict(x_test, verbose=0) for m in members], axis=0).argmax(axis=1)
    confusion = pd.read_csv(tmp_path / "reports/differences/confusion_champion.csv")
    assert list(confusion.columns) == ["actual", "predicted"]
    ours = confusion_matrix(confusion["actual"], confusion["predicted"], labels=range(10))
    assert (ours == confusion_matrix(y_test.argmax(axis=1), predicted, labels=range(10))).all()
    sizes = pd.read_csv(tmp_path / "reports/ensemble_size.csv")
    assert sizes[sizes["variant"] == champion]["members"].tolist() == [1, 2]
    assert sizes[(sizes["variant"] == champion) & (sizes["members"] == 2)]["val_accuracy"].item() == pytest.approx(served_val[champion], abs=1e-6)
    for name in ("per_class.csv", "calibration.csv", "confused_pairs.csv", "reliability.png", "mistakes.png", "disagreements.png"):
        assert (tmp_path / "reports/differences" / name).stat().st_size > 0, name
    assert (table["seeds"] == 2).all() and table["ensemble_val_accuracy"].is_monotonic_decreasing
    assert table.set_index("variant").loc["mlp-256-64-bn", "hidden_layers"] == "256-64"
    assert (table["test_accuracy_ci_low"] <= table["test_accuracy_mean"]).all()
    assert (table["test_accuracy_mean"] <= table["test_accuracy_ci_high"]).all()
    assert table["p_vs_champion"].isna()[0] and table["p_vs_champion"][1:].between(0, 1).all()
    assert set(table["tied_with_champion"][1:]) <= {True, False}
    markdown = (tmp_path / "reports/comparison.md").read_text()
    assert markdown.startswith(f"**Champion: {champion}**, whose seed ensemble") and "McNemar" in markdown
    summary = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert summary["champion"] == champion and summary["runner_up"] == table["variant"][1] and summary["select"] == "ensemble"
    assert all(isinstance(value, (str, int, float)) for value in summary.values()), "flat, for dvc exp show"
    bands = pd.read_csv(tmp_path / "reports/epochs.csv")  # what dvc.yaml's charts overlay
    history = pd.read_csv(tmp_path / "reports/history/mlp-256-64/seed-1.csv")
    assert sorted(bands["variant"].unique()) == sorted(params.variants) and bands["epoch"].max() == 2
    mine = bands[bands["variant"] == "mlp-256-64"].set_index("epoch")
    assert (mine["val_accuracy_low"] <= mine["val_accuracy"]).all() and (mine["val_accuracy"] <= mine["val_accuracy_high"]).all()
    assert abs(mine["val_accuracy"] - history.set_index("epoch")["val_accuracy"]).max() <= mine["val_accuracy_high"].sub(mine["val_accuracy"]).max() + 1e-6

    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == champion
    # Evaluate's run has an experiment of its own; the training runs' experiment is described.
    (evaluate_run,) = mlflow.search_runs(experiment_names=["mnist-mlp-evaluation"], output_format="list")
    assert evaluate_run.info.run_name == "evaluate" and "evaluate" not in runs_by_name(client)
    assert {"comparison.csv", "comparison.md", "comparison.png", "comparison.json"} <= {
        a.path for a in client.list_artifacts(evaluate_run.info.run_id)
    }
    experiment = client.get_experiment_by_name("mnist-mlp")
    assert "test_accuracy_mean" in experiment.tags["mlflow.note.content"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs
    # Each variant's run and registered version carry its test results; the champion's run its tag.
    runs, rows = runs_by_name(client), table.set_index("variant")
    for variant in params.variants:
        run, version = runs[variant], client.get_model_version_by_alias("mnist-mlp", variant)
        assert version.run_id == run.info.run_id
        for name in ("test_accuracy_mean", "test_accuracy_ci_low", "test_accuracy_ci_high", "ensemble_test_accuracy", "ensemble_val_accuracy"):
            assert run.data.metrics[name] == pytest.approx(rows.loc[variant, name], abs=1e-6)
        logged = client.get_logged_model(registry.logged_model_id(version))  # its metrics show on the version's page
        assert {m.key: m.value for m in logged.metrics}["test_accuracy_mean"] == pytest.approx(rows.loc[variant, "test_accuracy_mean"], abs=1e-6)
        described = version.description
        assert described.startswith(f"{variant}: the seed ensemble of 2 replicates (seeds 0, 1)")
        assert f"test accuracy {rows.loc[variant, 'test_accuracy_mean']:.4f}, 95% t-interval" in described
        assert f"This ensemble: validation accuracy {rows.loc[variant, 'ensemble_val_accuracy']:.4f}, test accuracy {rows.loc[variant, 'ensemble_test_accuracy']:.4f} (95% Wilson interval" in described
        # MLflow's own classifier evaluation of the served ensemble, in the variant's run.
        assert {"confusion_matrix.png", "per_class_metrics.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        # CPU and memory sampled during training.
        assert any(key.startswith("system/cpu_utilization_percentage") for key in run.data.metrics)
        assert run.data.tags["champion"] == ("true" if variant == champion else "false")
    assert "champion" in client.get_registered_model("mnist-mlp").description
    # The links evaluate prints: the experiment in Model-training mode, the variants compared.
    experiment_link = (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey=comparison&workflowType=machine_learning"
    )
    view = json.loads(client.get_experiment(experiment.experiment_id).tags["mlflow.sharedViewState.comparison"])
    assert view["searchFilter"] == f"tags.comparison = '{evaluate_run.info.run_id}'"
    compared = client.search_runs([experiment.experiment_id], view["searchFilter"])
    assert sorted(run.info.run_name for run in compared) == sorted(params.variants)
    assert f"  experiment: {experiment_link}\n" in printed
    compared = [runs[variant].info.run_id for variant in table["variant"]]
    assert f"  compare: http://127.0.0.1:5000/#/compare-runs?runs=%5B%22{compared[0]}%22%2C%22{compared[1]}%22%2C%22{compared[2]}%22%5D&" in printed

    # A fresh store (a new clone, a deleted mlflow.db): evaluate registers what DVC still has.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/fresh.db")
    assert evaluate(params) == champion
    client = mlflow.MlflowClient()
    for variant in params.variants:
        version = client.get_model_version_by_alias("mnist-mlp", variant)
        files = [tmp_path / f"models/{variant}/seed-{seed}.keras" for seed in SEEDS]
        assert version.tags["models_md5"] == registry.models_md5(files)
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == champion
    champions = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id], "tags.champion = 'true'")
    assert [run.info.run_name for run in champions] == [champion]
    # Run again against the now complete store: nothing is registered twice.
    evaluate(params)
    assert len(client.search_model_versions("name = 'mnist-mlp'")) == 3

    # `champion.select: replicate_mean` keeps the earlier rule: the best mean validation accuracy of single replicates.
    by_replicates = params.model_copy(update={"champion": params.champion.model_copy(update={"select": "replicate_mean"})})
    chosen = evaluate(by_replicates)
    table = pd.read_csv(tmp_path / "reports/comparison.csv")
    assert chosen == table["variant"][0] == table.loc[table["val_accuracy_mean"].idxmax(), "variant"]
    assert table["val_accuracy_mean"].is_monotonic_decreasing
    assert json.loads((tmp_path / "reports/metrics.json").read_text())["select"] == "replicate_mean"


def no_bare_nan(text: str) -> dict:
    """JSON as a strict parser reads it: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise AssertionError(f"bare {constant} in JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_diverging_replicate_fails_at_once_and_is_never_registered_ensembled_or_champion(workspace, tmp_path, capsys):
    params = only_variants(workspace, "mlp-256-64", "mlp-256-64-bn")
    diverging = params.variants["mlp-256-64-bn"].model_copy(update={"optimizer": "sgd", "learning_rate": 100.0})
    params = params.model_copy(update={"variants": {**params.variants, "mlp-256-64-bn": diverging}})
    for variant in params.variants:
        train(params, variant)
    assert "mlp-256-64-bn: every replicate diverged: nothing registered" in capsys.readouterr().out

    metrics = no_bare_nan((tmp_path / "reports/train/mlp-256-64-bn/replicates.json").read_text())
    assert metrics["replicates"] == [] and metrics["val_accuracy"] is None
    assert [failure["seed"] for failure in metrics["diverged"]] == SEEDS
    assert list((tmp_path / "models/mlp-256-64-bn").glob("*.keras")) == []
    client = mlflow.MlflowClient()
    runs = runs_by_name(client)
    for seed in SEEDS:
        replicate = runs[f"mlp-256-64-bn seed {seed}"]
        epoch = next(f["epoch"] for f in metrics["diverged"] if f["seed"] == seed)
        assert replicate.info.status == "FAILED"
        assert re.fullmatch(rf"(validation )?loss became (NaN|infinite) at epoch {epoch}", replicate.data.tags["failure"])
        # It stopped there: no epoch after the one that diverged was trained or logged.
        assert len(pd.read_csv(tmp_path / f"reports/history/mlp-256-64-bn/seed-{seed}.csv")) == epoch
    assert runs["mlp-256-64-bn"].info.status == "FAILED"
    assert {v.tags["variant"] for v in client.search_model_versions("name = 'mnist-mlp'")} == {"mlp-256-64"}

    # A finished replicate whose saved weights turn out non-finite: evaluate leaves it out too.
    damaged = tmp_path / "models/mlp-256-64/seed-1.keras"
    model = keras.saving.load_model(damaged, compile=False)
    weights = model.get_weights()
    weights[0][0, 0] = np.nan
    model.set_weights(weights)
    model.save(damaged)
    champion = evaluate(params)

    table = pd.read_csv(tmp_path / "reports/comparison.csv").set_index("variant")
    assert champion == "mlp-256-64" and table.index[-1] == "mlp-256-64-bn"
    assert table.loc["mlp-256-64", ["seeds", "failed_seeds"]].tolist() == [1, 1]
    assert table.loc["mlp-256-64-bn", ["seeds", "failed_seeds"]].tolist() == [0, 2]
    assert table.loc["mlp-256-64-bn", ["val_accuracy_mean", "test_accuracy_mean", "ensemble_test_accuracy"]].isna().all()
    no_bare_nan((tmp_path / "reports/metrics.json").read_text())
    summary = no_bare_nan((tmp_path / "reports/served.json").read_text())
    assert summary["ensembles"] == {"mlp-256-64": [0], "mlp-256-64-bn": []}
    assert summary["failed_replicates"]["mlp-256-64"] == [{"seed": 1, "reason": "non-finite weights in its model file"}]
    assert "mlp-256-64 seed 1 (non-finite weights in its model file)" in (tmp_path / "reports/comparison.md").read_text()
    assert "nan" not in (tmp_path / "reports/comparison.csv").read_text().lower()
    served = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert served.tags["variant"] == "mlp-256-64" and json.loads(served.tags["seeds"]) == [0]
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("mnist-mlp", "mlp-256-64-bn")


def test_one_seed_still_gives_the_table_with_empty_spreads(workspace, tmp_path):
    params = only_variants(workspace, "mlp-256-64", "mlp-256-64-bn")
    params = params.model_copy(update={"train": params.train.model_copy(update={"seeds": [0]})})
    for variant in params.variants:
        metrics = train(params, variant)
        assert metrics["seeds"] == [0] and metrics["val_accuracy_std"] is None
    champion = evaluate(params)

    table = pd.read_csv(tmp_path / "reports/comparison.csv")
    assert table["variant"][0] == champion and (table["seeds"] == 1).all()
    spreads = ["val_accuracy_std", "test_accuracy_std", "test_accuracy_ci_low", "test_accuracy_ci_high", "prob_champion_better"]
    assert table[spreads].isna().all().all()  # no spread over one seed; the ensemble's tests over images still stand
    assert table["test_accuracy_mean"].notna().all() and table["ensemble_test_accuracy"].notna().all()
    assert table["p_vs_champion"][1:].notna().all() and table["ensemble_test_ci_low"].notna().all()
    assert "t-interval over seeds" not in (tmp_path / "reports/comparison.md").read_text()
    summary_text = (tmp_path / "reports/metrics.json").read_text()
    assert "NaN" not in summary_text and json.loads(summary_text)["champion"] == champion
    # The rule of single replicates, which one seed cannot support, says so.
    by_replicates = params.model_copy(update={"champion": params.champion.model_copy(update={"select": "replicate_mean"})})
    evaluate(by_replicates)
    assert "With one seed per variant there is no spread" in (tmp_path / "reports/comparison.md").read_text()
    parent = runs_by_name(mlflow.MlflowClient())["mlp-256-64"]
    assert "val_accuracy_std" not in parent.data.metrics and "test_accuracy_ci_low" not in parent.data.metrics
    version = mlflow.MlflowClient().get_model_version_by_alias("mnist-mlp", "mlp-256-64")
    assert "t-interval" not in version.description and "seeds 0)" in version.description  # no spread over one seed


def test_the_mirrored_strategy_trains_on_the_cpu(workspace, tmp_path):
    params = workspace.model_copy(update={"train": workspace.train.model_copy(update={"strategy": "mirrored"})})
    metrics = train(params, "mlp-256-64")
    assert metrics["epochs"] == 2 and metrics["val_accuracy"] > 0.5
    assert runs_by_name(mlflow.MlflowClient())["mlp-256-64"].data.params["train.strategy"] == "mirrored"


def test_multi_worker_without_tf_config_is_refused_before_training(workspace, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    params = workspace.model_copy(update={"train": workspace.train.model_copy(update={"strategy": "multi_worker"})})
    with pytest.raises(SetupError, match="train.strategy: multi_worker needs TF_CONFIG"):
        train(params, "mlp-256-64")
    assert mlflow.search_runs(experiment_names=["mnist-mlp"], output_format="list") == []


def two_workers(command: list[str], cwd: Path, env: dict[str, str]) -> list[tuple[int, str, str]]:
    """Run command as workers 0 and 1 of a cluster on the loopback; their exit codes and output."""
    ports = [free_port(), free_port()]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}
        worker_env = {**env, "TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": ""}
        workers.append(subprocess.Popen(command, cwd=cwd, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outcomes = [worker.communicate(timeout=300) for worker in workers]
    return [(worker.returncode, out, err) for worker, (out, err) in zip(workers, outcomes)]


def test_two_workers_train_one_variant_and_only_the_chief_logs_and_writes(tmp_path, default_params, canonical_npz):
    small_workspace(tmp_path, default_params, canonical_npz, subset=600, max_epochs=2)
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["data"]["subset"], raw["train"]["max_epochs"], raw["train"]["strategy"] = 600, 2, "multi_worker"
    raw["train"]["seeds"] = [0]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = user_env(PYTHONPATH=str(REPO_ROOT))  # MLflow's default store: the chief's ./mlflow.db

    (chief_code, chief_out, chief_err), (worker_code, worker_out, worker_err) = two_workers(
        [sys.executable, "-m", "pipeline.train", "mlp-256-64"], tmp_path, env
    )
    assert chief_code == 0, chief_err[-3000:]
    assert worker_code == 0, worker_err[-3000:]
    assert "registered version 1" in chief_out and "worker done" in worker_out
    # One model trained by both: the worker's last validation is the chief's.
    chief_val = json.loads((tmp_path / "reports/train/mlp-256-64/metrics.json").read_text())["val_accuracy"]
    assert f"val_accuracy {chief_val:.4f}" in worker_out and chief_val > 0.5
    assert (tmp_path / "models/mlp-256-64/seed-0.keras").is_file()

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = runs_by_name(client)
    assert set(runs) == {"mlp-256-64", "mlp-256-64 seed 0"}  # the chief's alone
    assert runs["mlp-256-64"].data.params["train.strategy"] == "multi_worker"
    history = client.get_metric_history(runs["mlp-256-64 seed 0"].info.run_id, "val_accuracy")
    assert [metric.step for metric in history] == [1, 2]
    assert history[-1].value == pytest.approx(chief_val)


# Why multi_worker has its own loop: two real workers on the loopback, Keras' own fit.
TWO_WORKER_FIT = """
import sys
import numpy as np
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TensorFlow op
import keras
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
x, y = np.ones((64, 4), "float32"), np.eye(2, dtype="float32")[np.arange(64) % 2]
try:
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
except ValueError as error:
    sys.exit("fit failed: " + str(error).splitlines()[0])
print("fit trained")
"""


def test_keras_fit_still_cannot_train_with_two_workers(tmp_path):
    for code, out, err in two_workers([sys.executable, "-c", TWO_WORKER_FIT], tmp_path, dict(os.environ)):
        assert "fit trained" not in out, "Keras' fit now trains with MultiWorkerMirroredStrategy: pipeline/multi_worker.py can go"
        assert code != 0 and "fit failed: Attempt to convert a value (PerReplica" in err, err[-2000:]
