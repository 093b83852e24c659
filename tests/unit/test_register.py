"""pipeline/register.py in-process, in a copy of the evaluated workspace (tests/unit/conftest.py): a
lost store registered again from models/ without retraining, @champion where reports/served.json
says; a variant removed from params.yaml retired; a DVC experiment's results moving none of the main
line's aliases."""

import filecmp
import json
from pathlib import Path
from unittest.mock import ANY

import mlflow
import pytest

from pipeline.evaluate import evaluate
from pipeline.register import register
from pipeline.train import train
from tests.helpers import edit_params

SEEDS = [0, 1]


@pytest.fixture
def champion(evaluated, tmp_path):
    return json.loads((tmp_path / "reports/served.json").read_text())["champion"]


def test_a_new_store_gets_every_variant_registered_again_from_the_model_files(evaluated, champion, tmp_path, monkeypatch, capsys):
    """An empty store, as a deleted mlflow.db leaves (in-process MLflow keeps its engine on the deleted
    file, so a new file here; the deleted one: tests/scenarios/test_reliability.py)."""
    params = evaluated
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/new.db")
    capsys.readouterr()

    versions = register()

    assert sorted(versions) == sorted(params.variants)
    printed = capsys.readouterr().out
    assert f"registered again from models/: {', '.join(params.variants)}" in printed
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == champion
    for variant, version in versions.items():
        assert int(client.get_model_version_by_alias("mnist-mlp", variant).version) == version
        # What is registered is the files DVC keeps, byte for byte.
        downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/mnist-mlp/{version}", dst_path=str(tmp_path / f"got-{variant}")))
        for seed in SEEDS:
            (registered,) = downloaded.rglob(f"seed-{seed}.keras")
            assert filecmp.cmp(registered, tmp_path / f"models/{variant}/seed-{seed}.keras", shallow=False)

    assert "nothing was missing" in (register(), capsys.readouterr().out)[1]  # a second register only checks


def test_a_variant_removed_from_params_yaml_is_retired(evaluated, champion, tmp_path, capsys):
    params = evaluated
    removed = next(variant for variant in params.variants if variant != champion)
    edit_params(tmp_path, lambda raw: raw["variants"].pop(removed))
    (tmp_path / "reports/served.json").write_text(json.dumps({  # as evaluate would write it for the rest
        **json.loads((tmp_path / "reports/served.json").read_text()),
        "ensembles": {variant: SEEDS for variant in params.variants if variant != removed},
    }))
    capsys.readouterr()

    register()

    assert f"register: retired @{removed}: no longer in params.yaml" in capsys.readouterr().out
    client = mlflow.MlflowClient()
    assert removed not in client.get_registered_model("mnist-mlp").aliases
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == champion


def test_an_experiment_registers_its_champion_as_exp_name_and_moves_no_main_line_alias(evaluated, tmp_path, monkeypatch, capsys):
    """train and evaluate under `dvc exp run` (DVC_EXP_NAME set), with other settings (one seed), then a
    plain register: the main line's aliases and champion tags stay where they were."""
    params = evaluated
    client = mlflow.MlflowClient()
    main_line = client.get_registered_model("mnist-mlp").aliases
    (main_champion_run,) = [run.info.run_id for run in client.search_runs(
        [client.get_experiment_by_name("mnist-mlp").experiment_id], "tags.champion = 'true'")]

    monkeypatch.setenv("DVC_EXP_NAME", "quick-try")
    one_seed = params.model_copy(update={"train": params.train.model_copy(update={"seeds": [0]})})
    for variant in one_seed.variants:
        train(one_seed, variant)
    champion = evaluate(one_seed)

    assert client.get_registered_model("mnist-mlp").aliases == {**main_line, "exp-quick-try": ANY}
    version = client.get_model_version_by_alias("mnist-mlp", "exp-quick-try")
    assert (version.tags["variant"], version.tags["seeds"], version.tags["dvc_experiment"]) == (champion, "[0]", "quick-try")
    assert version.version not in main_line.values()  # one seed: other models, a version of their own
    assert json.loads((tmp_path / "reports/served.json").read_text())["experiment"] == "quick-try"
    assert client.get_run(main_champion_run).data.tags["champion"] == "true"

    monkeypatch.delenv("DVC_EXP_NAME")  # a plain `dvc repro` afterwards: served.json still the experiment's
    capsys.readouterr()
    register()
    assert "git checkout params.yaml && dvc repro" in capsys.readouterr().out
    assert client.get_registered_model("mnist-mlp").aliases == {**main_line, "exp-quick-try": ANY}
