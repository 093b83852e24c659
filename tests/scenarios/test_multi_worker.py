"""train.strategy multi_worker: two real TensorFlow workers on the loopback train one variant, and
why the project has its own loop for it (Keras' fit still cannot train there)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.helpers import REPO_ROOT, small_workspace, user_env
from tests.servers import free_port


def runs_by_name(client) -> dict:
    experiment = client.get_experiment_by_name("mnist-mlp")
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


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
    for spec in raw["variants"].values():  # VAT trains only replicates together: multi_worker refuses it
        spec.pop("vat_epsilon", None)
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
