"""pipeline/evaluate.py, in-process against a temporary MLflow SQLite store: the comparison of
replicates and seed ensembles, checked against plain Keras and scikit-learn; a lost store restored;
diverged and damaged replicates left out; one seed.
Workspaces: tests/unit/conftest.py."""

import json
import re

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix

from pipeline import registry
from pipeline.data import SERVED_INPUT, load_split
from pipeline.evaluate import evaluate
from pipeline.train import train
from tests.helpers import only_variants

SEEDS = [0, 1]


def runs_by_name(client) -> dict:
    experiment = client.get_experiment_by_name("mnist-mlp")
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def test_evaluate_compares_replicates_and_restores_a_lost_store(trained, tmp_path, monkeypatch, capsys):
    params = trained
    trained_runs = {name: run.info for name, run in runs_by_name(mlflow.MlflowClient()).items()}
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
            assert run.data.metrics[name] == pytest.approx(rows.loc[variant, name], rel=1e-5)  # the CSV keeps 6 significant digits
        logged = client.get_logged_model(registry.logged_model_id(version))  # its metrics show on the version's page
        assert {m.key: m.value for m in logged.metrics}["test_accuracy_mean"] == pytest.approx(rows.loc[variant, "test_accuracy_mean"], rel=1e-5)
        described = version.description
        assert described.startswith(f"{variant}: the seed ensemble of 2 replicates (seeds 0, 1)")
        assert f"test accuracy {rows.loc[variant, 'test_accuracy_mean']:.4f}, 95% t-interval" in described
        assert f"This ensemble: validation accuracy {rows.loc[variant, 'ensemble_val_accuracy']:.4f}, test accuracy {rows.loc[variant, 'ensemble_test_accuracy']:.4f} (95% Wilson interval" in described
        assert "Input: rows of 784 raw pixel intensities 0-255" in described  # the version's page says what it takes
        # MLflow's own classifier evaluation of the served ensemble, in the variant's run.
        assert {"confusion_matrix.png", "per_class_metrics.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        assert run.data.tags["champion"] == ("true" if variant == champion else "false")
        # Its duration in the UI is the training's own: evaluate's additions leave its times as train ended them.
        assert (run.info.start_time, run.info.end_time, run.info.status) == (
            trained_runs[variant].start_time, trained_runs[variant].end_time, "FINISHED")
    registered = client.get_registered_model("mnist-mlp").description
    assert "champion" in registered and SERVED_INPUT in registered
    # The links evaluate prints: the experiment in Model-training mode, the variants compared.
    experiment_link = (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey=comparison&workflowType=machine_learning"
    )
    view = json.loads(client.get_experiment(experiment.experiment_id).tags["mlflow.sharedViewState.comparison"])
    assert view["searchFilter"] == f"tags.comparison = '{evaluate_run.info.run_id}'"
    compared = client.search_runs([experiment.experiment_id], view["searchFilter"])
    assert sorted(run.info.run_name for run in compared) == sorted(params.variants)
    assert f"  experiment: {experiment_link}\n" in printed
    assert f"  compare: {experiment_link}&compareRunsMode=CHART\n" in printed
    # Its charts: the architecture against the served ensemble's accuracy, on params and metrics the runs hold.
    assert view["runsHiddenMode"] == "SHOW_ALL"  # every compared run charted, not the UI's first ten
    (parallel,) = [chart for chart in view["compareRunCharts"] if chart["type"] == "PARALLEL"]
    for run in compared:
        assert {"depth", "width", "dropout"} <= set(run.data.params) and set(parallel["selectedParams"]) == {"depth", "width", "dropout"}
        assert set(parallel["selectedMetrics"]) == {"ensemble_val_accuracy", "ensemble_test_accuracy"} <= set(run.data.metrics)

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
