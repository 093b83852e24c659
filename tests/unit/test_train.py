"""pipeline/train.py, in-process against a temporary MLflow SQLite store: a variant's replicates
trained, saved and tracked; the same params give the same results; the mirrored strategy the
default's; multi_worker refused without its cluster. Workspaces: tests/unit/conftest.py."""

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline import registry, tracking
from pipeline.data import load_split
from pipeline.errors import SetupError
from pipeline.train import train
from tests.helpers import ensemble_probabilities, assert_answers_are_the_ensembles

VARIANT = "mlp-256-64-bn"
SEEDS = [0, 1]


def runs_by_name(client) -> dict:
    experiment = client.get_experiment_by_name("mnist-mlp")
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def test_a_variant_trains_a_replicate_per_seed_saved_and_tracked(workspace, tmp_path, monkeypatch):
    # MLflow logs a sample of CPU and memory only after a full interval: a short one, for a short training.
    monkeypatch.setattr(tracking, "SYSTEM_METRICS_SECONDS", 0.5)
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
    assert any(key.startswith("system/cpu_utilization_percentage") for key in parent.data.metrics)  # sampled while training
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

    # The served ensemble answers raw pixels with the mean of its members' probabilities.
    x_val, y_val = load_split(tmp_path / "data/processed/validation.npz")
    pixels = np.rint(x_val[:200] * 255)
    answer = mlflow.pyfunc.load_model(f"models:/mnist-mlp@{VARIANT}").predict(pixels.astype(np.float64))
    assert list(answer.columns) == ["digit", "probabilities"]
    assert_answers_are_the_ensembles(answer["digit"], answer["probabilities"].tolist(), ensemble_probabilities(model_files, pixels))


def test_the_same_params_give_the_same_results(workspace, trained_workspace, tmp_path):
    """Trained again in another directory: the same metrics, histories and weights, to the bit."""
    metrics = train(workspace, VARIANT)
    reference = trained_workspace[0]
    earlier = json.loads((reference / f"reports/train/{VARIANT}/replicates.json").read_text())
    for result in (metrics, earlier):
        result.pop("train_seconds")
        for replicate in result["replicates"]:
            replicate.pop("train_seconds")
    assert metrics == earlier
    for seed in SEEDS:
        name = f"{VARIANT}/seed-{seed}"
        assert (tmp_path / f"reports/history/{name}.csv").read_text() == (reference / f"reports/history/{name}.csv").read_text()
        ours = keras.saving.load_model(tmp_path / f"models/{name}.keras", compile=False).get_weights()
        theirs = keras.saving.load_model(reference / f"models/{name}.keras", compile=False).get_weights()
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_mirrored_strategy_trains_what_the_default_strategy_trains(workspace, trained_workspace, tmp_path):
    """On this one-CPU machine the mirrored strategy has one replica: the default strategy's run
    (trained_workspace) is its reference, weight for weight and epoch for epoch."""
    params = workspace.model_copy(update={"train": workspace.train.model_copy(update={"strategy": "mirrored"})})
    train(params, "mlp-256-64")
    assert runs_by_name(mlflow.MlflowClient())["mlp-256-64"].data.params["train.strategy"] == "mirrored"
    reference = trained_workspace[0]
    for seed in SEEDS:
        name = f"mlp-256-64/seed-{seed}"
        mirrored = pd.read_csv(tmp_path / f"reports/history/{name}.csv")
        default = pd.read_csv(reference / f"reports/history/{name}.csv")
        np.testing.assert_allclose(mirrored.to_numpy(), default.to_numpy(), rtol=1e-4, atol=1e-6)
        ours = keras.saving.load_model(tmp_path / f"models/{name}.keras", compile=False).get_weights()
        theirs = keras.saving.load_model(reference / f"models/{name}.keras", compile=False).get_weights()
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_multi_worker_without_tf_config_is_refused_before_training(workspace, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    params = workspace.model_copy(update={"train": workspace.train.model_copy(update={"strategy": "multi_worker"})})
    with pytest.raises(SetupError, match="train.strategy: multi_worker needs TF_CONFIG"):
        train(params, "mlp-256-64")
    assert mlflow.search_runs(experiment_names=["mnist-mlp"], output_format="list") == []
