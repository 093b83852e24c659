"""The registered model `mnist-mlp` in MLflow's registry: a version per variant's seed ensemble,
logged as the served model; its aliases (one per variant, and `@champion`), kept servable.

The aliases are the main line's (`dvc repro`). A DVC experiment (`dvc exp run`, which names it in
DVC_EXP_NAME) registers its versions, tagged with its name, and points only `@exp-NAME` at its
champion: trying something never changes what is served.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array

from pipeline.data import SERVED_INPUT
from pipeline.errors import DataError, without_credentials
from pipeline.files import file_digest
from pipeline.model import has_finite_weights, load_replicate
from pipeline.tracking import run

REGISTERED_MODEL = "mnist-mlp"
CHAMPION_ALIAS = "champion"
RETIRED_TAG = "retired"  # on a version whose variant left params.yaml: when its alias was removed
EXPERIMENT_VARIABLE = "DVC_EXP_NAME"  # set by `dvc exp run` for every stage it runs
EXPERIMENT_TAG = "dvc_experiment"  # on a version registered by an experiment: its name
# After a workspace experiment: its params undone, each stage's main-line outputs come back from
# DVC's run cache, nothing retrained.
RETURN_TO_MAIN_LINE = "back to the main line's results, without retraining: git checkout params.yaml && dvc repro"
REGISTERED_MODEL_DESCRIPTION = (
    "One version per variant: the seed ensemble of its replicates (the mean of their probabilities), served "
    "from raw pixels. Each variant's alias (`@mlp-256-64`, ...) points at its newest version; `@champion` at "
    "the variant whose seed ensemble, what is served, has the best validation accuracy (params.yaml "
    "`champion.select`; the test set reports, it never chooses). Each version's description gives its "
    "validation and test accuracy with intervals, and whether it is tied with the champion. A DVC experiment "
    "(`dvc exp run`) moves none of these: its versions carry the tag `dvc_experiment`, its champion the alias "
    "`@exp-NAME`. Input: " + SERVED_INPUT + " Output: `digit` and the ten class `probabilities`."
)
PACKAGE_DIR = Path(__file__).resolve().parent

# The served model: MLflow runs SERVING_MODULE, which imports the package files listed here and
# nothing else of the package (tests/test_structure.py checks both lists against the imports).
SERVING_MODULE = "serving.py"
SERVED_FILES = ("__init__.py", "serving.py", "data.py", "ensemble.py", "errors.py")
# The distributions those files import, and Keras' backend.
SERVING_DISTRIBUTIONS = ("mlflow", "numpy", "pandas", "keras", "tensorflow-cpu", "tensorflow")

# Outputs only: MLflow enforces any input schema before the model sees the request, and none states
# what users send (docs/serving.md#what-it-accepts): a float64 tensor refuses uint8 arrays and integer
# CSV; 784 unnamed columns refuse 28x28 images and silently keep the first 784 cells of a wider row;
# named columns refuse plain arrays. The model checks its input itself (data.SERVED_INPUT, in its
# metadata as `input`, and in the registered model's and each version's description).
SIGNATURE = mlflow.models.ModelSignature(
    outputs=Schema([ColSpec("long", "digit"), ColSpec(Array("double"), "probabilities")]),
)


def models_md5(model_files: list[Path]) -> str:
    """The md5 of a seed ensemble's member files, read in seed order."""
    return file_digest(*model_files, algorithm="md5")


def serving_code_md5() -> str:
    """What the served model runs besides its weights: a change means a new version."""
    return file_digest(*(PACKAGE_DIR / name for name in SERVED_FILES), algorithm="md5")


def serving_requirements() -> list[str]:
    """The served model's pip requirements: what it imports, at the versions installed here."""
    pins = []
    for name in SERVING_DISTRIBUTIONS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue  # tensorflow-cpu here, tensorflow on a GPU machine
    return pins


def dvc_experiment() -> str | None:
    """The DVC experiment the stage runs for (`dvc exp run`), or None on the main line (`dvc repro`)."""
    return os.environ.get(EXPERIMENT_VARIABLE) or None


def experiment_alias(experiment: str) -> str:
    """The alias of an experiment's champion: `exp-` and its name, in the characters an alias may hold."""
    return "exp-" + re.sub(r"[^\w-]", "-", experiment)


def log_and_register_model(model_files: dict[int, Path], variant: str, example: np.ndarray, experiment: str | None = None) -> int:
    """Log the variant's seed ensemble (one member per seed) into the active run as the served
    model, register it, and on the main line point the variant's alias at it. A member that is not
    a readable Keras model of finite weights is refused: nothing unservable is registered."""
    seeds = sorted(model_files)
    for seed in seeds:
        if not has_finite_weights(load_replicate(model_files[seed], variant)):
            raise DataError(f"{model_files[seed]} holds non-finite weights: it is not registered")
    with tempfile.TemporaryDirectory(prefix="served-code-") as staging:
        # The model's code/ directory: the package files serving imports, and only those.
        package = Path(staging) / PACKAGE_DIR.name
        package.mkdir()
        for name in SERVED_FILES:
            shutil.copy2(PACKAGE_DIR / name, package / name)
        with warnings.catch_warnings():
            # MLflow asks for type hints on predict; the model has none on purpose (serving.py).
            warnings.filterwarnings("ignore", message="Add type hints to the `predict` method")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PACKAGE_DIR / SERVING_MODULE),  # models from code: nothing pickled
                artifacts={f"seed-{seed}": str(model_files[seed]) for seed in seeds},
                code_paths=[str(package)],
                signature=SIGNATURE,
                input_example=example,
                metadata={"input": SERVED_INPUT},
                pip_requirements=serving_requirements(),
                registered_model_name=REGISTERED_MODEL,
            )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(REGISTERED_MODEL, str(version), "variant", variant)
    client.set_model_version_tag(REGISTERED_MODEL, str(version), "seeds", json.dumps(seeds))
    client.set_model_version_tag(REGISTERED_MODEL, str(version), "models_md5", models_md5([model_files[s] for s in seeds]))
    client.set_model_version_tag(REGISTERED_MODEL, str(version), "serving_code_md5", serving_code_md5())
    if experiment:
        client.set_model_version_tag(REGISTERED_MODEL, str(version), EXPERIMENT_TAG, experiment)
    else:
        point_alias(variant, version)
    return version


def unservable(version: int, seeds: list[int]) -> str | None:
    """Why a registered version cannot be served from this store (its MLmodel or a member's file cannot
    be read where the store records them), or None when it can."""
    uri = mlflow.MlflowClient().get_model_version_download_uri(REGISTERED_MODEL, str(version))
    try:
        repository = get_artifact_repository(uri)
        with tempfile.TemporaryDirectory(prefix="mlmodel-") as scratch:
            mlflow.models.Model.load(repository.download_artifacts("MLmodel", scratch))
        members = {Path(entry.path).name: entry.file_size for entry in repository.list_artifacts("artifacts")}
    except Exception as error:  # whatever the artifact store says: the version is not servable
        return f"its MLmodel cannot be read at {without_credentials(uri)} ({type(error).__name__})"
    missing = [f"seed-{seed}.keras" for seed in seeds if not members.get(f"seed-{seed}.keras")]
    return f"{', '.join(missing)} missing at {without_credentials(uri)}" if missing else None


def find_registered_versions(model_files: dict[str, dict[int, Path]], stage: str) -> dict[str, int | None]:
    """Per variant, the registered version holding exactly its replicates' model files and today's
    serving code, and servable from this store; or None. One listing of the registry for all; a
    version that is listed but cannot be served is said in one line."""
    code = serving_code_md5()
    by_content = {
        (v.tags.get("variant"), v.tags.get("models_md5"), v.tags.get("serving_code_md5")): int(v.version)
        for v in mlflow.MlflowClient().search_model_versions(f"name = '{REGISTERED_MODEL}'")
    }
    found = {}
    for variant, files in model_files.items():
        version = by_content.get((variant, models_md5([files[seed] for seed in sorted(files)]), code))
        if version is not None and (why := unservable(version, sorted(files))):
            print(f"{stage}: {variant}'s registered version {version} cannot be served from this store: {why}")
            version = None
        found[variant] = version
    return found


def ensure_registered(
    model_files: dict[str, dict[int, Path]], example: np.ndarray, stage: str, experiment: str | None = None
) -> tuple[dict[str, int], list[str]]:
    """Each variant's registered seed ensemble of exactly `model_files` (its finished replicates),
    on the main line its alias pointed there; what the store lacks or cannot serve (lost, replaced,
    or new serving code) is logged again from DVC's files, in a run of its own. On the main line a
    variant without files loses its alias. The versions, and the variants registered again."""
    versions = find_registered_versions({variant: files for variant, files in model_files.items() if files}, stage)
    again = []
    for variant, files in model_files.items():
        if not files:  # every replicate failed: nothing to serve under its name
            if not experiment:
                drop_alias(variant)
        elif versions[variant] is not None:
            if not experiment:
                point_alias(variant, versions[variant])
        else:
            print(f"{stage}: registering {variant} again from models/{variant}/ (the registry has no servable version of these models and serving code)")
            with run(variant, {"dvc_stage": f"train@{variant}", "registered_by": stage}):
                versions[variant] = log_and_register_model(files, variant, example, experiment)
            again.append(variant)
    return versions, again


def retire_aliases(variants: list[str]) -> list[str]:
    """Remove the alias of every variant no longer in params.yaml (so it serves no more), tagging its
    version `retired` with when and why; the version itself stays in the registry. The aliases retired."""
    client = mlflow.MlflowClient()
    try:
        aliases = client.get_registered_model(REGISTERED_MODEL).aliases
    except mlflow.exceptions.MlflowException:  # nothing registered yet
        return []
    retired = []
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for alias, version in sorted(aliases.items()):
        if alias in variants or alias == CHAMPION_ALIAS:
            continue
        client.set_model_version_tag(REGISTERED_MODEL, str(version), RETIRED_TAG, f"{when}: @{alias} removed, the variant is no longer in params.yaml")
        client.delete_registered_model_alias(REGISTERED_MODEL, alias)
        retired.append(alias)
    return retired


def describe_registered_again(variant: str, version: int) -> None:
    """A version registered again after the store lost it: where its comparison is, until evaluate reruns."""
    mlflow.MlflowClient().update_model_version(
        REGISTERED_MODEL,
        str(version),
        description=(
            f"{variant}: the seed ensemble of its replicates, registered again from DVC's files (models/{variant}/) "
            "after the tracking store lost it. Its comparison is in reports/comparison.md; `dvc repro -f evaluate` "
            "records it here again."
        ),
    )


def drop_alias(alias: str) -> None:
    """Remove `alias` from the registered model, if it is there."""
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        mlflow.MlflowClient().delete_registered_model_alias(REGISTERED_MODEL, alias)


def point_alias(alias: str, version: int) -> None:
    mlflow.MlflowClient().set_registered_model_alias(REGISTERED_MODEL, alias, str(version))


def set_champion(version: int, variant: str, experiment: str | None = None) -> str:
    """Point the champion's alias at `version`: `@champion` on the main line, `@exp-NAME` for an
    experiment. The alias."""
    if experiment:
        point_alias(alias := experiment_alias(experiment), version)
        return alias
    point_alias(CHAMPION_ALIAS, version)
    mlflow.MlflowClient().set_registered_model_tag(REGISTERED_MODEL, "champion_variant", variant)
    return CHAMPION_ALIAS
def logged_model_id(model_version) -> str | None:
    """The logged model a registered version came from (MLflow 3 names it in the version's source,
    `models:/m-...`, and leaves `model_id` empty here): its metrics show on the version's page."""
    if model_version.model_id:
        return model_version.model_id
    source = model_version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def version_runs(versions: dict[str, int]) -> dict[str, tuple[str, str | None]]:
    """Per variant, the run its version was logged in and that version's logged model."""
    client = mlflow.MlflowClient()
    found = {}
    for variant, version in versions.items():
        model_version = client.get_model_version(REGISTERED_MODEL, str(version))
        found[variant] = (model_version.run_id, logged_model_id(model_version))
    return found


def describe_versions(descriptions: dict[str, str], versions: dict[str, int]) -> None:
    """Each version's description (what it is, how well it did, how sure we are), and the registered model's."""
    client = mlflow.MlflowClient()
    for variant, version in versions.items():
        client.update_model_version(REGISTERED_MODEL, str(version), description=descriptions[variant])
    client.update_registered_model(REGISTERED_MODEL, description=REGISTERED_MODEL_DESCRIPTION)
