"""End to end: DVC runs the stages in a fresh copy of the repository, as a user would."""

import json
import re

import mlflow
import numpy as np
import pandas as pd
import yaml

from pipeline.data import ARRAY_SHA256, load_split

from conftest import copy_of_repository, dvc


def test_repro_preprocess_yields_the_canonical_splits_and_then_does_nothing(tmp_path):
    repo = copy_of_repository(tmp_path)

    first = dvc("repro", "preprocess", cwd=repo)
    assert "Running stage 'download'" in first and "Running stage 'preprocess'" in first

    record = json.loads((repo / "data/raw/mnist.json").read_text())
    assert record["sha256"] == ARRAY_SHA256
    sizes = {}
    for name in ("train", "validation", "test"):
        x, y = load_split(repo / f"data/processed/{name}.npz")
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert (y.sum(axis=1) == 1).all()
        sizes[name] = len(x)
    assert sizes == {"train": 49_500, "validation": 10_500, "test": 10_000}

    again = dvc("repro", "preprocess", cwd=repo)
    assert "Running stage" not in again
    assert "didn't change" in again


def test_the_quick_pipeline_trains_tracks_and_picks_a_champion(tmp_path):
    repo = copy_of_repository(tmp_path)
    variants = list(yaml.safe_load((repo / "params.yaml").read_text())["variants"])
    assert len(variants) == 10

    output = dvc("exp", "run", "-S", "data.subset=3000", "-S", "train.max_epochs=1", cwd=repo)
    for variant in variants:
        assert f"Running stage 'train@{variant}'" in output
        # Keras' line for the epoch follows the stage's own first line.
        assert re.search(rf"train@{variant}: .*\n\d+/\d+ - .* - val_accuracy: ", output)
    assert "Running stage 'evaluate'" in output

    table = pd.read_csv(repo / "reports/comparison.csv")
    assert sorted(table["variant"]) == sorted(variants)
    assert (table["epochs"] == 1).all()
    champion = table.loc[table["val_accuracy"].idxmax(), "variant"]
    assert json.loads((repo / "reports/metrics.json").read_text())["champion"] == champion
    assert (repo / "reports/comparison.md").is_file() and (repo / "reports/comparison.png").is_file()

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "mnist-mlp"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == sorted([*variants, "evaluate"])
    for run in runs:
        assert run.info.status == "FINISHED"
        if run.info.run_name == "evaluate":
            continue
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"weights.png", "curves.png", "model_summary.txt"} <= artifacts
        assert client.get_model_version_by_alias("mnist-mlp", run.info.run_name).run_id == run.info.run_id
    assert len(client.search_model_versions("name = 'mnist-mlp'")) == 10
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == champion

    again = dvc("repro", cwd=repo)
    assert "Running stage" not in again

    # A speed-only key reruns nothing; a key of one variant reruns that variant and the comparison.
    assert "Running stage" not in dvc("exp", "run", "-S", "speed.steps_per_execution=32", cwd=repo)
    edited = dvc("exp", "run", "-S", "variants.mlp-256-64.dropout=0.2", cwd=repo)
    assert sorted(re.findall(r"Running stage '([^']+)'", edited)) == ["evaluate", "train@mlp-256-64"]
