"""Training, tracking and evaluation in-process, against a temporary MLflow sqlite store."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import tracking
from pipeline.data import load_split
from pipeline.errors import SetupError
from pipeline.evaluate import evaluate
from pipeline.train import train
from tests.servers import free_port

from conftest import REPO_ROOT, small_workspace, user_env

VARIANT = "mlp-256-64-bn"


@pytest.fixture
def workspace(tmp_path, monkeypatch, canonical_npz, default_params):
    """A repository-like working directory with a small processed dataset and its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return small_workspace(tmp_path, default_params, canonical_npz, subset=600, max_epochs=2)


def only_variants(params, *names):
    return params.model_copy(update={"variants": {name: params.variants[name] for name in names}})


def test_a_trained_variant_is_saved_and_fully_tracked(workspace, tmp_path):
    metrics = train(workspace, VARIANT)

    saved = json.loads((tmp_path / f"reports/train/{VARIANT}/metrics.json").read_text())
    assert saved == metrics and saved["epochs"] == 2 and saved["params"] == 219_338
    history = pd.read_csv(tmp_path / f"reports/history/{VARIANT}.csv")
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert history["epoch"].tolist() == [1, 2]
    assert (tmp_path / f"models/{VARIANT}.keras").is_file()

    client = mlflow.MlflowClient()
    (run,) = mlflow.search_runs(experiment_names=["mnist-mlp"], output_format="list")
    assert run.info.run_name == VARIANT and run.info.status == "FINISHED"
    p = run.data.params
    assert (p["hidden_layers"], p["batch_norm"], p["dropout"], p["init_stddev"]) == ("[256, 64]", "True", "0.0", "[0.039, 0.55]")
    assert (p["param_count"], p["data.subset"], p["train.max_epochs"], p["epochs"]) == ("219338", "600", "2", "20")
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        steps = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in steps] == [1, 2]
        assert [m.value for m in steps] == pytest.approx(history[name].tolist())
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(metrics["val_accuracy"])
    assert run.data.metrics["final_train_seconds"] == pytest.approx(metrics["train_seconds"])
    assert run.data.tags["dvc_stage"] == f"train@{VARIANT}"
    assert len(run.data.tags["params_hash"]) == 16 and run.data.tags["git_commit"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"weights.png", "curves.png", "model_summary.txt"} <= artifacts
    inputs = {d.dataset.name: [t.value for t in d.tags] for d in run.inputs.dataset_inputs}
    assert inputs == {"mnist-training": ["training"], "mnist-validation": ["validation"]}

    version = client.get_model_version_by_alias("mnist-mlp", VARIANT)
    assert int(version.version) == 1 and version.run_id == run.info.run_id
    assert version.tags["model_md5"] == tracking.model_md5(tmp_path / f"models/{VARIANT}.keras")

    # Its code is the package files serving runs, its requirements what they import.
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/mnist-mlp@{VARIANT}"))
    assert sorted(p.name for p in (model_dir / "code/pipeline").iterdir()) == sorted(tracking.SERVED_FILES)
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert sorted(requirements) == sorted(tracking.serving_requirements())
    assert version.tags["serving_code_md5"] == tracking.serving_code_md5()

    # The registered model takes raw pixels and answers digits.
    x_val, y_val = load_split(tmp_path / "data/processed/validation.npz")
    served = mlflow.pyfunc.load_model(f"models:/mnist-mlp@{VARIANT}")
    answer = served.predict(np.rint(x_val[:50] * 255).astype(np.float64))
    assert list(answer.columns) == ["digit", "probabilities"]
    assert (answer["digit"].to_numpy() == y_val[:50].argmax(axis=1)).mean() > 0.5
    assert np.allclose([sum(p) for p in answer["probabilities"]], 1.0, atol=1e-5)


def test_the_same_params_give_the_same_metrics(workspace, tmp_path):
    first = train(workspace, "mlp-256-64-bn-dropout")
    first_history = (tmp_path / "reports/history/mlp-256-64-bn-dropout.csv").read_text()
    second = train(workspace, "mlp-256-64-bn-dropout")
    second_history = (tmp_path / "reports/history/mlp-256-64-bn-dropout.csv").read_text()
    first.pop("train_seconds"), second.pop("train_seconds")
    assert first == second
    assert first_history == second_history


def test_evaluate_picks_by_validation_and_restores_a_lost_store(workspace, tmp_path, monkeypatch):
    params = only_variants(workspace, "mlp-256-64", "mlp-256-64-bn")
    for variant in params.variants:
        train(params, variant)
    champion = evaluate(params)

    table = pd.read_csv(tmp_path / "reports/comparison.csv")
    assert list(table.columns) == [
        "variant", "hidden_layers", "batch_norm", "dropout", "params", "epochs",
        "val_accuracy", "test_loss", "test_accuracy", "train_seconds",
    ]
    assert champion == table.loc[table["val_accuracy"].idxmax(), "variant"] == table["variant"][0]
    assert table.set_index("variant").loc["mlp-256-64-bn", "hidden_layers"] == "256-64"
    assert (tmp_path / "reports/comparison.md").read_text().startswith(f"Champion (best validation accuracy): **{champion}**")
    assert json.loads((tmp_path / "reports/metrics.json").read_text())["champion"] == champion
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == champion
    (evaluate_run,) = mlflow.search_runs(experiment_names=["mnist-mlp"], filter_string="run_name = 'evaluate'", output_format="list")
    assert {"comparison.csv", "comparison.md", "comparison.png", "comparison.json"} <= {
        a.path for a in client.list_artifacts(evaluate_run.info.run_id)
    }

    # A fresh store (a new clone, a deleted mlflow.db): evaluate registers what DVC still has.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/fresh.db")
    assert evaluate(params) == champion
    client = mlflow.MlflowClient()
    for variant in params.variants:
        version = client.get_model_version_by_alias("mnist-mlp", variant)
        assert version.tags["model_md5"] == tracking.model_md5(tmp_path / f"models/{variant}.keras")
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == champion
    # Run again against the now complete store: nothing is registered twice.
    evaluate(params)
    assert len(client.search_model_versions("name = 'mnist-mlp'")) == 2


def test_the_mirrored_strategy_trains_on_the_cpu(workspace, tmp_path):
    params = workspace.model_copy(update={"train": workspace.train.model_copy(update={"strategy": "mirrored"})})
    metrics = train(params, "mlp-256-64")
    assert metrics["epochs"] == 2 and metrics["val_accuracy"] > 0.5
    (run,) = mlflow.search_runs(experiment_names=["mnist-mlp"], output_format="list")
    assert run.data.params["train.strategy"] == "mirrored"


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
    assert (tmp_path / "models/mlp-256-64.keras").is_file()

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=["mnist-mlp"], output_format="list")  # the chief's alone
    assert run.data.params["train.strategy"] == "multi_worker"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")
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
