"""pipeline/register.py in-process, in a copy of the evaluated workspace (tests/unit/conftest.py): a
lost store registered again from models/ without retraining, @champion where reports/served.json
says; a variant removed from params.yaml retired."""

import filecmp
import json
from pathlib import Path

import mlflow
import pytest

from pipeline.register import register
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
