"""End to end: DVC runs the stages in a fresh clone, as a user would: the download through the
network sources, and the README's quick run of the whole pipeline (conftest.quick_run, shared and
read-only: what an edit would rerun is asked of `dvc repro --dry` in a clone)."""

import json
import re
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import yaml

from pipeline.data import ARRAY_SHA256, load_split
from tests.helpers import (
    assert_answers_are_the_ensembles, clone, copy_of_repository, default_raw, dvc, edit_params, ensemble_probabilities, stages_run,
)
from tests.servers import scoring_server

# Images per digit 0-9 in MNIST's test set, as published.
TEST_DIGITS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_repro_preprocess_yields_the_canonical_splits_and_then_does_nothing(tmp_path):
    repo = copy_of_repository(tmp_path)  # params.yaml as shipped: MNIST through the network sources

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
        if name == "test":  # kept whole, in MNIST's order: its published images per digit
            assert np.bincount(y.argmax(axis=1), minlength=10).tolist() == TEST_DIGITS
    assert sizes == {"train": 49_500, "validation": 10_500, "test": 10_000}

    again = dvc("repro", "preprocess", cwd=repo)
    assert "Running stage" not in again
    assert "didn't change" in again


def test_the_quick_pipeline_trains_replicates_compares_and_serves_the_champion(quick_run, canonical_arrays, monkeypatch):
    repo, output = quick_run
    monkeypatch.chdir(repo)  # the store's artifact locations are relative to the repository root
    variants = list(yaml.safe_load((repo / "params.yaml").read_text())["variants"])
    assert variants == list(default_raw()["variants"]), "every variant params.yaml ships"
    seeds = [0, 1, 2]

    for variant in variants:
        assert f"Running stage 'train@{variant}'" in output
        # Keras' line for the epoch follows the stage's own first line: the seeds train together.
        assert re.search(rf"train@{variant}: .*\nEpoch 1/2\n\d+/\d+ - .* - val_seed_0_accuracy: .* - val_seed_2_accuracy: ", output)
    assert "Running stage 'evaluate'" in output

    table = pd.read_csv(repo / "reports/comparison.csv")
    assert sorted(table["variant"]) == sorted(variants)
    assert (table["epochs"] == 2).all() and (table["seeds"] == 3).all()
    assert table["test_accuracy_std"].notna().all() and table["p_vs_champion"][1:].notna().all()
    champion = table.loc[table["ensemble_val_accuracy"].idxmax(), "variant"]  # champion.select: ensemble, as shipped
    assert json.loads((repo / "reports/metrics.json").read_text())["champion"] == champion == table["variant"][0]
    assert (repo / "reports/comparison.md").is_file() and (repo / "reports/comparison.png").is_file()

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "mnist-mlp"]
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    children = [f"{variant} seed {seed}" for variant in variants for seed in seeds]
    assert sorted(runs) == sorted([*variants, *children])  # evaluate's run is in an experiment of its own
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    for variant in variants:
        parent = runs[variant]
        for name in ("val_accuracy", "val_accuracy_std"):
            assert [m.step for m in client.get_metric_history(parent.info.run_id, name)] == [1, 2]
        assert {"weights.png", "curves.png", "model_summary.txt"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert client.get_model_version_by_alias("mnist-mlp", variant).run_id == parent.info.run_id
        for seed in seeds:
            child = runs[f"{variant} seed {seed}"]
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.data.params["seed"] == str(seed)
    assert len(client.search_model_versions("name = 'mnist-mlp'")) == len(variants)
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == champion

    # dvc plots: per metric one chart of the variants overlaid; every variant's figures as images.
    plotted = json.loads(dvc("plots", "show", "--json", cwd=repo))["data"]
    charts = {name: plotted[name][0] for name in ("validation_accuracy", "validation_loss", "training_loss")}
    for name, chart in charts.items():
        assert chart["type"] == "vega"
        spec = chart["content"]
        assert {row["variant"] for row in spec["data"]["values"]} == set(variants)
        assert spec["encoding"]["color"]["field"] == "variant"
        assert {layer["mark"]["type"] for layer in spec["layer"]} == {"area", "line"}  # the seed mean and its band
    assert charts["validation_accuracy"]["content"]["layer"][1]["encoding"]["y"]["title"] == "validation accuracy"
    sizes = plotted["ensemble_size_validation"][0]["content"]  # what each extra seed buys, the variants overlaid
    assert {row["variant"] for row in sizes["data"]["values"]} == set(variants)
    assert sorted({int(row["members"]) for row in sizes["data"]["values"]}) == [1, 2, 3]
    for role in ("champion", "runner_up"):  # DVC's own confusion template
        assert plotted[f"reports/differences/confusion_{role}.csv"][0]["type"] == "vega"
    images = [name for name, entries in plotted.items() if entries[0]["type"] == "image"]
    expected = [f"reports/train/{variant}/{figure}" for variant in variants for figure in ("weights.png", "curves.png")]
    differences = [f"reports/differences/{name}.png" for name in ("reliability", "mistakes", "disagreements")]
    assert sorted(images) == sorted([*expected, "reports/comparison.png", *differences])

    # The champion's seed ensemble, served, answers raw pixels: its member files' mean probabilities.
    images = canonical_arrays["x_test"][:100].reshape(100, 784)
    with scoring_server("models:/mnist-mlp@champion", env={"MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow.db"}, cwd=repo) as url:
        request = urllib.request.Request(
            f"{url}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    expected = ensemble_probabilities([repo / f"models/{champion}/seed-{seed}.keras" for seed in seeds], images)
    assert_answers_are_the_ensembles([p["digit"] for p in predictions], [p["probabilities"] for p in predictions], expected)


def test_a_repro_reruns_only_what_changed(quick_run, tmp_path):
    """Every repro checks the registry (register always runs); nothing else reruns. A speed-only key
    reruns nothing but that check; a key of one variant reruns that variant and the comparison.
    (Any edit of params.yaml reruns validate, whose output never changes.)"""
    repo = clone(quick_run[0], tmp_path / "repo")
    again = dvc("repro", cwd=repo)
    assert stages_run(again) == ["register"] and "nothing was missing" in again

    edit_params(repo, lambda p: p["speed"].update(steps_per_execution=32))
    assert stages_run(dvc("repro", "--dry", cwd=repo)) == ["validate", "register"]
    edit_params(repo, lambda p: p["variants"]["mlp-256-64"].update(dropout=0.2))
    assert stages_run(dvc("repro", "--dry", cwd=repo)) == ["validate", "train@mlp-256-64", "evaluate", "register"]
