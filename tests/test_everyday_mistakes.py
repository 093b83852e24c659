"""Everyday mistakes lose nothing: a params.yaml typo, a moved or copied repository, a removed
variant, MLflow's file store. Each drives the real thing: `dvc repro`, `mv`, `cp -a`, a real
`mlflow models serve`."""

import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.servers import scoring_server

from conftest import dvc, user_env
from test_reliability import edit_params, small_repo, stage_lines

OUTPUTS = ("models", "reports/history", "reports/train", "reports/comparison.csv", "reports/metrics.json")


def digests(root: Path, *names: str) -> dict[str, str]:
    """sha256 of every file under `names` (files or directories) of root, by relative path."""
    files = [path for name in names for path in ([root / name] if (root / name).is_file() else sorted((root / name).rglob("*")))]
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files if path.is_file()}


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def repro_fails(repo: Path) -> str:
    result = subprocess.run(["dvc", "repro"], cwd=repo, env=user_env(), capture_output=True, text=True)
    assert result.returncode != 0
    return result.stdout + result.stderr


def serves(repo: Path, images, alias: str = "champion") -> list[int]:
    """`mlflow models serve` of models:/mnist-mlp@ALIAS, from the repository root as docs/serving.md says: its digits."""
    with scoring_server(f"models:/mnist-mlp@{alias}", env={"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, cwd=repo) as url:
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return [p["digit"] for p in json.loads(response.read())["predictions"]]


@pytest.fixture(scope="module")
def trained_repo(tmp_path_factory, canonical_npz) -> Path:
    """A small repository (two one-epoch variants, two seeds) after one `dvc repro`."""
    repo = small_repo(tmp_path_factory.mktemp("everyday"), canonical_npz)
    dvc("repro", cwd=repo)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "trained"], cwd=repo, check=True)
    return repo


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


def test_a_moved_repository_serves_and_a_copy_reads_and_writes_only_its_own_store(trained_repo, tmp_path, canonical_arrays):
    images = canonical_arrays["x_test"][:20].reshape(20, 784)
    moved = tmp_path / "moved"
    subprocess.run(["mv", str(trained_repo), str(moved)], check=True)
    try:
        # Straight after `mv`, before any repro: the store's artifact locations are the repository's own.
        digits = serves(moved, images)
        assert len(digits) == 20
        again = dvc("repro", cwd=moved)
        assert stages_run(again) == ["register"] and "nothing was missing" in again

        copy = tmp_path / "copy"
        subprocess.run(["cp", "-a", str(moved), str(copy)], check=True)
        original = digests(moved, "mlflow.db", "mlruns")
        edit_params(copy, lambda p: p["variants"]["mlp-256-64"].update(dropout=0.2))
        trained = dvc("repro", cwd=copy)
        assert "Running stage 'train@mlp-256-64'" in trained
        assert serves(copy, images, "mlp-256-64") and serves(copy, images)
        assert digests(moved, "mlflow.db", "mlruns") == original, "the copy wrote into the original's store"
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{copy}/mlflow.db")
        newest = client.get_model_version_by_alias("mnist-mlp", "mlp-256-64")
        assert newest.tags["variant"] == "mlp-256-64" and int(newest.version) == 3
        assert client.get_model_version_download_uri("mnist-mlp", newest.version).startswith("mlruns/")
    finally:
        subprocess.run(["mv", str(moved), str(trained_repo)], check=True)


def test_a_store_with_absolute_locations_elsewhere_is_relocated_and_a_lost_artifact_registered_again(trained_repo, canonical_arrays):
    """A store made before locations were relative records absolute paths: moved, they point nowhere."""
    repo = trained_repo
    with sqlite3.connect(repo / "mlflow.db") as connection:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location"), ("model_versions", "storage_location")):
            connection.execute(f"UPDATE {table} SET {column} = 'file:///old/checkout/' || {column} WHERE {column} LIKE 'mlruns/%'")
    output = dvc("repro", cwd=repo)
    assert stages_run(output) == ["register"] and "nothing was missing" in output
    assert len(serves(repo, canonical_arrays["x_test"][:5].reshape(5, 784))) == 5

    # The registry lists a version whose files are gone: register notices and registers it again.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    version = client.get_model_version_by_alias("mnist-mlp", "mlp-256-64-bn")
    location = repo / client.get_model_version_download_uri("mnist-mlp", version.version)
    (location / "MLmodel").unlink()
    healed = dvc("repro", cwd=repo)
    assert f"register: mlp-256-64-bn's registered version {version.version} cannot be served from this store: its MLmodel cannot be read" in healed
    assert "registered again from models/: mlp-256-64-bn" in healed
    assert int(client.get_model_version_by_alias("mnist-mlp", "mlp-256-64-bn").version) > int(version.version)
    assert len(serves(repo, canonical_arrays["x_test"][:5].reshape(5, 784), "mlp-256-64-bn")) == 5


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
    subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=repo, check=True)


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
