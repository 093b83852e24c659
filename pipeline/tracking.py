"""Everything the stages tell MLflow, in one place.

The store is MLflow's own choice: MLFLOW_TRACKING_URI if set, else its default
(`sqlite:///mlflow.db` in the working directory, the repository root under DVC).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Iterator

import keras
import mlflow
import numpy as np

from pipeline.config import ParamsError
from pipeline.serving import SIGNATURE

# Stage output goes to DVC's log, not a terminal: no artifact progress bars in it, and not
# MLflow's "View run at" links, which repeat the tracking URI, credentials included.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

EXPERIMENT = "mnist-mlp"
REGISTERED_MODEL = "mnist-mlp"
CHAMPION_ALIAS = "champion"
PACKAGE_DIR = Path(__file__).resolve().parent
# The distributions the served model imports (pipeline.preprocess and its imports included).
SERVING_DISTRIBUTIONS = (
    "mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas", "scikit-learn", "pydantic", "PyYAML",
)  # fmt: skip


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def file_md5(*paths: Path) -> str:
    """The hash DVC records for an output in dvc.lock (of one file; of several, together)."""
    digest = hashlib.md5()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def serving_code_md5() -> str:
    """What the served model runs besides its weights: a change means a new version."""
    return file_md5(PACKAGE_DIR / "serving.py", PACKAGE_DIR / "preprocess.py")


def params_hash(used: dict) -> str:
    return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()[:16]


def check_store_fits_workspace() -> None:
    """Refuse the embedded sqlite store where its runs would be lost or corrupted.

    `dvc exp run --queue` and `--temp` run each experiment in a temporary copy of the
    repository, often several at once: a `sqlite:///mlflow.db` there is deleted with the copy,
    and sqlite takes one writer at a time.
    """
    if mlflow.get_tracking_uri().startswith("sqlite:") and "/.dvc/tmp/exps/" in f"{Path.cwd().as_posix()}/":
        raise ParamsError(
            "MLFLOW_TRACKING_URI: this stage runs in a temporary DVC workspace (`dvc exp run --queue` or "
            "`--temp`), where the embedded sqlite store would be lost with the workspace and cannot take "
            "parallel writers. Set MLFLOW_TRACKING_URI to a tracking server (README: Team set-up)."
        )


@contextlib.contextmanager
def run(name: str, tags: dict[str, str]) -> Iterator[mlflow.ActiveRun]:
    """A run in the `mnist-mlp` experiment; under `mlflow run`, a child of the project's run."""
    check_store_fits_workspace()
    mlflow.set_experiment(EXPERIMENT)
    # `mlflow run` hands its run to us through MLFLOW_RUN_ID; logging into it directly would
    # pile every stage into one run, so each stage becomes its child instead.
    parent = os.environ.pop("MLFLOW_RUN_ID", None)
    if parent:
        tags = {**tags, "mlflow.parentRunId": parent}
    with mlflow.start_run(run_name=name, tags={"git_commit": git_commit(), **tags}) as active:
        try:
            yield active
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM under atomic.stop_on_sigterm()
            mlflow.end_run(status="KILLED")  # not FAILED, and never left RUNNING
            raise


def log_params(params: dict) -> None:
    mlflow.log_params({key: json.dumps(value) if isinstance(value, list) else value for key, value in params.items()})


def log_datasets(splits: dict[str, tuple[np.ndarray, np.ndarray, Path]]) -> None:
    """Record the exact data trained on (name, digest, source file) as MLflow dataset inputs."""
    for context, (x, y, source) in splits.items():
        with warnings.catch_warnings():
            # MLflow registers its local-file source under two schemes and warns that a path matches both.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_numpy(x, targets=y, source=str(source), name=f"mnist-{context}")
        mlflow.log_input(dataset, context=context)


class EpochMetrics(keras.callbacks.Callback):
    """Logs Keras' epoch metrics with step = epoch number (1-based, as in history.csv).

    mlflow.keras.MlflowCallback counts epochs from 0 and logs every validation pass again
    as step-less `validation_*` metrics, so this three-line callback replaces it.
    """

    def on_epoch_end(self, epoch, logs=None):
        # Synchronous: ~3 ms a call on sqlite (under 1% of an epoch); MLflow's asynchronous
        # logging saves that but costs about 1 s when the run ends.
        mlflow.log_metrics({name: float(value) for name, value in (logs or {}).items()}, step=epoch + 1)


def log_metrics(metrics: dict[str, float]) -> None:
    mlflow.log_metrics(metrics)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_table(table, artifact_file: str) -> None:
    mlflow.log_table(table, artifact_file)  # shown as a table in the run's artifacts view


def log_artifact(path: Path) -> None:
    mlflow.log_artifact(str(path))


def serving_requirements() -> list[str]:
    """The served model's pip requirements: what it imports, at the versions installed here."""
    pins = []
    for name in SERVING_DISTRIBUTIONS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue  # tensorflow-cpu here, tensorflow on a GPU machine
    return pins


def log_and_register_model(model_file: Path, variant: str, example: np.ndarray) -> int:
    """Log the served model into the active run, register it, point the variant's alias at it."""
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PACKAGE_DIR / "serving.py"),  # models from code: nothing pickled
        artifacts={"keras_model": str(model_file)},
        code_paths=[str(PACKAGE_DIR)],  # the serving process imports pipeline.preprocess from here
        signature=SIGNATURE,
        input_example=example,
        pip_requirements=serving_requirements(),
        registered_model_name=REGISTERED_MODEL,
    )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(REGISTERED_MODEL, str(version), "variant", variant)
    client.set_model_version_tag(REGISTERED_MODEL, str(version), "model_md5", file_md5(model_file))
    client.set_model_version_tag(REGISTERED_MODEL, str(version), "serving_code_md5", serving_code_md5())
    client.set_registered_model_alias(REGISTERED_MODEL, variant, str(version))
    return version


def registered_versions(model_files: dict[str, Path]) -> dict[str, int | None]:
    """Per variant, the registered version holding exactly its model file and today's serving
    code (its `@variant` alias is pointed there), or None. One listing of the registry for all."""
    client = mlflow.MlflowClient()
    code = serving_code_md5()
    by_content = {
        (v.tags.get("variant"), v.tags.get("model_md5"), v.tags.get("serving_code_md5")): int(v.version)
        for v in client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    }
    found = {variant: by_content.get((variant, file_md5(path), code)) for variant, path in model_files.items()}
    for variant, version in found.items():
        if version is not None:
            client.set_registered_model_alias(REGISTERED_MODEL, variant, str(version))
    return found


def set_champion(version: int, variant: str) -> None:
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, str(version))
    client.set_registered_model_tag(REGISTERED_MODEL, "champion_variant", variant)
