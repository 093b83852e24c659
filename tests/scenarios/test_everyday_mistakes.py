"""Everyday mistakes lose nothing: a params.yaml typo, a quick experiment in a trained checkout, a
moved or copied repository, a removed variant, MLflow's file store. Each drives the real thing: `dvc repro`, `mv`, `cp -a`, a real
`mlflow models serve`."""

import json
import re
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from unittest.mock import ANY

import mlflow
import numpy as np
import pytest

from tests.helpers import (
    assert_answers_are_the_ensembles, clone, digests, dvc, edit_params, ensemble_probabilities, stage_lines, stages_run, user_env,
)
from tests.servers import scoring_server

OUTPUTS = ("models", "reports/history", "reports/train", "reports/comparison.csv", "reports/metrics.json")
SEEDS = (0, 1)  # conftest.small_trained's


def repro_fails(repo: Path) -> str:
    result = subprocess.run(["dvc", "repro"], cwd=repo, env=user_env(), capture_output=True, text=True)
    assert result.returncode != 0
    return result.stdout + result.stderr


def served_variant(repo: Path, alias: str) -> str:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db").get_model_version_by_alias("mnist-mlp", alias).tags["variant"]


def expected_answers(repo: Path, alias: str, images: np.ndarray) -> np.ndarray:
    """The reference: the member files of the variant the alias serves, averaged by plain Keras."""
    variant = served_variant(repo, alias)
    return ensemble_probabilities([repo / f"models/{variant}/seed-{seed}.keras" for seed in SEEDS], images)


def scoring_server_answers(repo: Path, images: np.ndarray, alias: str = "champion") -> tuple[list[int], list]:
    """`mlflow models serve` of models:/mnist-mlp@ALIAS, from the repository root as docs/serving.md says."""
    with scoring_server(f"models:/mnist-mlp@{alias}", env={"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, cwd=repo) as url:
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    return [p["digit"] for p in predictions], [p["probabilities"] for p in predictions]


def in_process_answers(repo: Path, images: np.ndarray, alias: str, monkeypatch) -> tuple[list[int], list]:
    """mlflow.pyfunc's load of models:/mnist-mlp@ALIAS from the repository root (its artifact locations
    are relative to it): what the scoring server loads, without starting one where the store, not the
    server, is what is tested. The store's path absolute: in one process MLflow keeps an engine per
    URI, and `sqlite:///mlflow.db` would reach the first repository's."""
    with monkeypatch.context() as patch:
        patch.chdir(repo)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo}/mlflow.db")
        frame = mlflow.pyfunc.load_model(f"models:/mnist-mlp@{alias}").predict(images)
    return frame["digit"].tolist(), frame["probabilities"].tolist()


@pytest.fixture
def trained_repo(small_trained, tmp_path) -> Path:
    """A clone of the session's small trained repository (two one-epoch variants, two seeds), this test's own."""
    return clone(small_trained, tmp_path / "repo")


MISTAKES = [
    (lambda p: p["variants"]["mlp-256-64"].update(drpout=0.5),
     "variants.mlp-256-64.drpout: unknown key; did you mean dropout?"),
    (lambda p: p["train"].update(batch_size=0), "train.batch_size: Input should be greater than 0 (got 0)"),
    (lambda p: p["train"].update(seeds=[]), "train.seeds: List should have at least 1 item after validation, not 0 (got [])"),
    (lambda p: p["variants"]["mlp-256-64"].update(hidden_layers=[]), "variants.mlp-256-64.hidden_layers: List should have at least 1 item"),
    (lambda p: p["variants"].update({"mlp 1": dict(p["variants"]["mlp-256-64"])}), "variants.mlp 1: a variant's name is 1-63 lowercase letters"),
    (lambda p: p["train"].update(learning_rate="abc"), "train.learning_rate: Input should be a valid number (got 'abc')"),
]


def test_a_params_mistake_touches_no_output_and_its_fix_retrains_nothing(trained_repo):
    repo = trained_repo
    before = digests(repo, *OUTPUTS)
    for mistake, says in MISTAKES:
        edit_params(repo, mistake)
        output = repro_fails(repo)
        assert stages_run(output) == ["validate"], says
        problems = [line for line in output.splitlines() if line.startswith("  ")]
        assert len(problems) == 1 and problems[0].startswith(f"  {says}"), output  # one line, once (not per variant)
        assert digests(repo, *OUTPUTS) == before, f"{says}: an output was touched"
        subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=repo, check=True)

    # Where DVC refuses params.yaml first, nothing is removed either; its message names the stage, and
    # `make pipeline` (validate before DVC) says it is the variant's name.
    edit_params(repo, lambda p: p["variants"].update({"../x": dict(p["variants"]["mlp-256-64"])}))
    output = repro_fails(repo)
    assert "'train@../x'" in output and "overlap" in output
    result = subprocess.run([sys.executable, "-m", "pipeline.validate"], cwd=repo, env=user_env(), capture_output=True, text=True)
    assert result.returncode == 1 and "  variants.../x: a variant's name is 1-63 lowercase letters" in result.stderr
    assert digests(repo, *OUTPUTS) == before
    subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=repo, check=True)

    fixed = dvc("repro", cwd=repo)
    assert not [stage for stage in stages_run(fixed) if stage not in ("validate", "register")], "nothing retrained or re-evaluated"
    assert digests(repo, *OUTPUTS) == before


def test_a_quick_experiment_never_moves_what_is_served_and_one_command_brings_the_results_back(trained_repo, canonical_arrays, monkeypatch):
    """The README's quick run (`dvc exp run -S ...`) in the checkout of a trained pipeline: its champion
    is @exp-NAME, @champion still answers as before; the documented way back retrains nothing."""
    repo = trained_repo
    images = canonical_arrays["x_test"][:20].reshape(20, 784)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    aliases = client.get_registered_model("mnist-mlp").aliases
    answers = in_process_answers(repo, images, "champion", monkeypatch)
    before = digests(repo, *OUTPUTS)

    output = dvc("exp", "run", "-n", "quick", "-S", "data.subset=1000", "-S", "train.seeds=[0,1,2]", cwd=repo)
    assert {"train@mlp-256-64", "train@mlp-256-64-bn", "evaluate"} <= set(stages_run(output))
    assert "@champion and the variants' aliases stay the main line's" in output
    assert client.get_registered_model("mnist-mlp").aliases == {**aliases, "exp-quick": ANY}
    quick = client.get_model_version_by_alias("mnist-mlp", "exp-quick")
    assert quick.tags["dvc_experiment"] == "quick" and quick.tags["seeds"] == "[0, 1, 2]"
    assert in_process_answers(repo, images, "champion", monkeypatch) == answers
    # A plain `dvc repro` now finds the experiment's results in the workspace: they move nothing either.
    assert "the workspace holds experiment quick's results" in dvc("repro", cwd=repo)
    assert client.get_registered_model("mnist-mlp").aliases == {**aliases, "exp-quick": ANY}

    back = subprocess.run("git checkout params.yaml && dvc repro", shell=True, cwd=repo, env=user_env(), capture_output=True, text=True)
    assert back.returncode == 0, back.stdout + back.stderr
    # The trainings come back from DVC's run cache; evaluate (its reports are git's, not the cache's) reruns.
    assert [stage for stage in stages_run(back.stdout) if stage.startswith("train@")] == [], "nothing retrained"
    assert "Stage 'train@mlp-256-64' is cached - skipping run, checking out outputs" in back.stdout
    assert digests(repo, *OUTPUTS) == before
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True).stdout
    assert status == "", status  # dvc.lock and reports/ as committed
    assert in_process_answers(repo, images, "champion", monkeypatch) == answers


def test_a_moved_repository_serves_and_a_copy_reads_and_writes_only_its_own_store(trained_repo, tmp_path, canonical_arrays, monkeypatch):
    images = canonical_arrays["x_test"][:20].reshape(20, 784)
    moved = tmp_path / "moved"
    subprocess.run(["mv", str(trained_repo), str(moved)], check=True)
    # Straight after `mv`, before any repro: the store's artifact locations are the repository's own.
    assert_answers_are_the_ensembles(*scoring_server_answers(moved, images), expected_answers(moved, "champion", images))
    again = dvc("repro", cwd=moved)
    assert stages_run(again) == ["register"] and "nothing was missing" in again

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(moved), str(copy)], check=True)
    original = digests(moved, "mlflow.db", "mlruns")
    edit_params(copy, lambda p: p["variants"]["mlp-256-64"].update(dropout=0.2))
    trained = dvc("repro", cwd=copy)
    assert "Running stage 'train@mlp-256-64'" in trained
    for alias in ("mlp-256-64", "champion"):
        assert_answers_are_the_ensembles(*in_process_answers(copy, images, alias, monkeypatch), expected_answers(copy, alias, images))
    assert digests(moved, "mlflow.db", "mlruns") == original, "the copy wrote into the original's store"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{copy}/mlflow.db")
    newest = client.get_model_version_by_alias("mnist-mlp", "mlp-256-64")
    assert newest.tags["variant"] == "mlp-256-64" and int(newest.version) == 3
    assert client.get_model_version_download_uri("mnist-mlp", newest.version).startswith("mlruns/")


def test_a_store_with_absolute_locations_elsewhere_is_relocated_and_a_lost_artifact_registered_again(trained_repo, canonical_arrays, monkeypatch):
    """A store made before locations were relative records absolute paths: moved, they point nowhere."""
    repo = trained_repo
    with sqlite3.connect(repo / "mlflow.db") as connection:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location"), ("model_versions", "storage_location")):
            connection.execute(f"UPDATE {table} SET {column} = 'file:///old/checkout/' || {column} WHERE {column} LIKE 'mlruns/%'")
    output = dvc("repro", cwd=repo)
    assert stages_run(output) == ["register"] and "nothing was missing" in output
    images = canonical_arrays["x_test"][:5].reshape(5, 784)
    assert_answers_are_the_ensembles(*in_process_answers(repo, images, "champion", monkeypatch), expected_answers(repo, "champion", images))

    # The registry lists a version whose files are gone: register notices and registers it again.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    version = client.get_model_version_by_alias("mnist-mlp", "mlp-256-64-bn")
    location = repo / client.get_model_version_download_uri("mnist-mlp", version.version)
    (location / "MLmodel").unlink()
    healed = dvc("repro", cwd=repo)
    assert f"register: mlp-256-64-bn's registered version {version.version} cannot be served from this store: its MLmodel cannot be read" in healed
    assert "registered again from models/: mlp-256-64-bn" in healed
    assert int(client.get_model_version_by_alias("mnist-mlp", "mlp-256-64-bn").version) > int(version.version)
    answers = in_process_answers(repo, images, "mlp-256-64-bn", monkeypatch)
    assert_answers_are_the_ensembles(*answers, expected_answers(repo, "mlp-256-64-bn", images))


def test_a_removed_variant_stops_serving_and_its_version_is_kept_tagged_retired(trained_repo):
    repo = trained_repo
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    removed = client.get_model_version_by_alias("mnist-mlp", "mlp-256-64-bn")
    edit_params(repo, lambda p: p["variants"].pop("mlp-256-64-bn"))
    output = dvc("repro", cwd=repo)
    (line,) = [line for line in output.splitlines() if line.startswith("register: retired")]
    assert line == "register: retired @mlp-256-64-bn: no longer in params.yaml, so no longer served (the versions stay in the registry, tagged retired)"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("mnist-mlp", "mlp-256-64-bn")
    kept = client.get_model_version("mnist-mlp", removed.version)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+: @mlp-256-64-bn removed, the variant is no longer in params.yaml", kept.tags["retired"])
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == "mlp-256-64"
    assert set(client.get_registered_model("mnist-mlp").aliases) == {"mlp-256-64", "champion"}


@pytest.mark.parametrize("uri", ["file:./mlruns", "./mlruns"])
def test_a_store_without_a_registry_is_one_line_before_any_work(trained_repo, uri):
    result = subprocess.run([sys.executable, "-m", "pipeline.train", "mlp-256-64"], cwd=trained_repo,
                            env=user_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert stage_lines(result.stderr) == [
        f"train: MLFLOW_TRACKING_URI={uri} is MLflow's file store, which has no model registry (every variant is registered): "
        "unset it for this repository's own sqlite:///mlflow.db, or set a sqlite:/// URI or a tracking server's http(s):// "
        "address (docs/team-setup.md)"
    ]
