"""Everything the stages tell MLflow, in one place.

The store is MLflow's own choice: MLFLOW_TRACKING_URI if set, else its default
(`sqlite:///mlflow.db` in the working directory, the repository root under DVC). That embedded
store keeps its artifacts in the repository's own `mlruns/`, recorded as relative paths, so a moved
or copied repository reads and writes its own (relocate_embedded_store).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Callable, Iterator

import keras
import mlflow
import numpy as np
import pandas as pd
import psutil
from mlflow.entities import Metric, Param, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array

from pipeline.data import SERVED_INPUT
from pipeline.errors import DataError, SetupError, without_credentials
from pipeline.files import file_digest
from pipeline.model import has_finite_weights, load_replicate

# Stage output goes to DVC's log, not a terminal: no artifact progress bars in it, and not
# MLflow's "View run at" links, which repeat the tracking URI, credentials included.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

EXPERIMENT = "mnist-mlp"
EVALUATION_EXPERIMENT = "mnist-mlp-evaluation"  # evaluate's runs: kept out of the list of training runs
REGISTERED_MODEL = "mnist-mlp"
CHAMPION_ALIAS = "champion"
CHAMPION_TAG = "champion"
COMPARISON_TAG = "comparison"  # on a variant's run: the evaluate run that compared it last
FAILURE_TAG = "failure"  # on a FAILED replicate's run: why (a diverged loss, and the epoch)
# Where a run's process runs: the next run of its stage on this host ends it KILLED if that process is gone.
HOST_TAG, PID_TAG, PROCESS_STARTED_TAG = "host", "pid", "process_started"
STORE_CHECK_SECONDS = 10
RETIRED_TAG = "retired"  # on a version whose variant left params.yaml: when its alias was removed
# The embedded store's artifact root, relative to the repository root (where stages, `mlflow ui` and
# `mlflow models serve` run), and every column of MLflow's schema that records an artifact location.
ARTIFACT_ROOT = "mlruns"
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)
# An absolute location inside some checkout's mlruns/: `/old/repo/mlruns/1/...` or `file:///old/repo/mlruns/1/...`.
ABSOLUTE_LOCATION = re.compile(rf"^(?:file://)?/.*/{ARTIFACT_ROOT}/(\d+(?:/.*)?)$")
# The columns of the experiment's comparison view (the runs table shows each metric's last value).
VIEW_PARAMS = ["hidden_layers"]
VIEW_METRICS = ["val_accuracy", "test_accuracy_mean", "test_accuracy_ci_low", "test_accuracy_ci_high", "ensemble_test_accuracy"]
# What the MLflow UI shows atop each experiment (its note) and in the registry.
EXPERIMENT_DESCRIPTIONS = {
    EXPERIMENT: (
        "Training runs of the MNIST multilayer perceptrons: one run per variant (`dvc repro` stage "
        "`train@VARIANT`), with a child run per seed. A variant's run holds the per-epoch mean and standard "
        "deviation over its seeds (`val_accuracy`, `val_accuracy_std`, ...) and, once `evaluate` has run, "
        "its test accuracy: `test_accuracy_mean` with its 95% interval (`test_accuracy_ci_low`, "
        "`test_accuracy_ci_high`), `ensemble_test_accuracy`, and `p_vs_champion`. The champion, the best "
        "mean validation accuracy, carries the tag `champion`.\n\n"
        "To compare: the links `evaluate` prints open this list filtered to the compared runs (tag "
        "`comparison`), best mean validation accuracy first, and the compare view of those runs (parallel "
        "coordinates of `depth`, `width`, `dropout` against `test_accuracy_mean`). "
        f"Each comparison is a run of the experiment `{EVALUATION_EXPERIMENT}`, with its table."
    ),
    EVALUATION_EXPERIMENT: (
        "One run per `evaluate` stage: the comparison of the variants on the test set (`comparison.json`, "
        "`comparison.md`, `comparison.png`) and the champion's metrics. The variants' runs are in the "
        f"experiment `{EXPERIMENT}`."
    ),
}
REGISTERED_MODEL_DESCRIPTION = (
    "One version per variant: the seed ensemble of its replicates (the mean of their probabilities), served "
    "from raw pixels. Each variant's alias (`@mlp-256-64`, ...) points at its newest version; `@champion` at "
    "the variant with the best mean validation accuracy over its seeds (the test set reports, it never "
    "chooses). Each version's description gives its validation and test accuracy with intervals."
)
PACKAGE_DIR = Path(__file__).resolve().parent

# The served model: MLflow runs SERVING_MODULE, which imports the package files listed here and
# nothing else of the package (tests/test_structure.py checks both lists against the imports).
SERVING_MODULE = "serving.py"
SERVED_FILES = ("__init__.py", "serving.py", "data.py", "ensemble.py", "errors.py")
# The distributions those files import, and Keras' backend.
SERVING_DISTRIBUTIONS = ("mlflow", "numpy", "pandas", "keras", "tensorflow-cpu", "tensorflow")

# Outputs only: an input schema would make MLflow refuse what users send (uint8 arrays, integer CSV
# cells) before the model sees it; the served model checks its input itself (data.SERVED_INPUT, recorded
# in the model's metadata as `input`).
SIGNATURE = mlflow.models.ModelSignature(
    outputs=Schema([ColSpec("long", "digit"), ColSpec(Array("double"), "probabilities")]),
)


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def models_md5(model_files: list[Path]) -> str:
    """The md5 of a seed ensemble's member files, read in seed order."""
    return file_digest(*model_files, algorithm="md5")


def serving_code_md5() -> str:
    """What the served model runs besides its weights: a change means a new version."""
    return file_digest(*(PACKAGE_DIR / name for name in SERVED_FILES), algorithm="md5")


def params_hash(used: dict) -> str:
    return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()[:16]


def check_store_fits_workspace() -> None:
    """Refuse the embedded sqlite store where its runs would be lost or corrupted.

    `dvc exp run --queue` and `--temp` run each experiment in a temporary copy of the
    repository, often several at once: a `sqlite:///mlflow.db` there is deleted with the copy,
    and sqlite takes one writer at a time.
    """
    if mlflow.get_tracking_uri().startswith("sqlite:") and "/.dvc/tmp/exps/" in f"{Path.cwd().as_posix()}/":
        raise SetupError(
            "MLFLOW_TRACKING_URI: this stage runs in a temporary DVC workspace (`dvc exp run --queue` or "
            "`--temp`), where the embedded sqlite store would be lost with the workspace and cannot take "
            "parallel writers. Set MLFLOW_TRACKING_URI to a tracking server (docs/team-setup.md)."
        )


def check_store_has_registry() -> None:
    """MLflow's file store (`file:` URIs, or a bare path) has no model registry, which every stage needs."""
    uri = mlflow.get_tracking_uri()
    if urllib.parse.urlsplit(uri).scheme in ("", "file"):
        raise SetupError(
            f"MLFLOW_TRACKING_URI={without_credentials(uri)} is MLflow's file store, which has no model registry "
            "(every variant is registered): unset it for this repository's own sqlite:///mlflow.db, or set a "
            "sqlite:/// URI or a tracking server's http(s):// address (docs/team-setup.md)"
        )


def embedded_store() -> Path | None:
    """The sqlite file of the store, when it lies in the working directory (the repository root): the
    repository's own store, which moves with it. None for any other store."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(urllib.parse.unquote(uri.removeprefix("sqlite:///").split("?")[0]))
    return database if database.resolve().parent == Path.cwd().resolve() else None


def relocate_embedded_store() -> int:
    """Record every artifact location of the embedded store relative to the repository root (`mlruns/...`).

    MLflow records absolute paths, so a moved repository would look for its artifacts where it was, and
    a copy would read, and write new versions into, the original's mlruns/. Rewritten to relative paths
    (MLflow resolves them from the working directory), each checkout reads and writes its own. Rows
    rewritten (0 once done)."""
    database = embedded_store()
    if database is None or not database.is_file():
        return 0
    rewritten = 0
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection, connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in LOCATION_COLUMNS:
            if table not in tables:
                continue
            rows = connection.execute(f"SELECT rowid, {column} FROM {table} WHERE {column} LIKE '%/{ARTIFACT_ROOT}/%'")
            moved = [(f"{ARTIFACT_ROOT}/{match.group(1)}", rowid) for rowid, value in rows if (match := ABSOLUTE_LOCATION.match(value or ""))]
            connection.executemany(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", moved)
            rewritten += len(moved)
    return rewritten


def check_store() -> None:
    """Before any work: the store has a registry and fits this workspace, the embedded store's
    artifacts are this checkout's own, and a tracking server answers within STORE_CHECK_SECONDS,
    once, not after MLflow's minutes of retries. Its failure names the server's host and port,
    never its credentials."""
    check_store_has_registry()
    check_store_fits_workspace()
    relocate_embedded_store()
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    server = urllib.parse.urlsplit(uri)
    where = f"{server.hostname}:{server.port or (443 if server.scheme == 'https' else 80)}"
    # MLflow reads both at each request: one try, a short wait, for this request only.
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(STORE_CHECK_SECONDS)}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except Exception as error:
        raise SetupError(f"MLFLOW_TRACKING_URI: cannot use the MLflow tracking server at {where}: {store_failure(error)}") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def store_failure(error: Exception) -> str:
    """What went wrong reaching a tracking server, said without its URL (which may hold credentials)."""
    text = str(error)
    if "Connection refused" in text:
        return "nothing listens there (connection refused); start the server or fix the address"
    if "timed out" in text.lower() or "Timeout" in type(error).__name__:
        return f"no answer within {STORE_CHECK_SECONDS} s; check that the server is up and reachable from here"
    if isinstance(error, mlflow.exceptions.MlflowException) and (match := re.search(r"error code (\d+)", text)):
        code = int(match.group(1))
        if code in (401, 403):
            return f"it refused the credentials (HTTP {code}); check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        return f"it answered HTTP {code} to MLflow's API; is this an MLflow tracking server?"
    return f"{type(error).__name__}; check the address and that the server is up"


def process_tags() -> dict[str, str]:
    """Where this process runs: host, pid, and its start time (a reused pid has another)."""
    process = psutil.Process()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(process.pid), PROCESS_STARTED_TAG: f"{process.create_time():.2f}"}


def process_is_gone(tags: dict[str, str]) -> bool:
    """Whether the process a run's tags name is no longer running on this host."""
    try:
        return f"{psutil.Process(int(tags[PID_TAG])).create_time():.2f}" != tags[PROCESS_STARTED_TAG]
    except psutil.NoSuchProcess:
        return True


def end_abandoned_runs(dvc_stage: str) -> list[str]:
    """End as KILLED, with a note, every run of `dvc_stage` left RUNNING on this host by a process
    that is gone (SIGKILL, out of memory, a power cut: nothing could end them). Runs of a live
    process, and of other hosts, are left alone. Their names."""
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for name in EXPERIMENT_DESCRIPTIONS if (e := client.get_experiment_by_name(name))]
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.dvc_stage = '{dvc_stage}' and tags.{HOST_TAG} = '{host}'"
    ended = []
    for run in client.search_runs(experiments, query) if experiments else []:
        if PID_TAG not in run.data.tags or not process_is_gone(run.data.tags):
            continue
        note = (
            f"Ended as KILLED by the next run of `{dvc_stage}` on {host} at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: "
            f"its process {run.data.tags[PID_TAG]} was gone without ending it (killed, out of memory, or the machine stopped)."
        )
        client.set_tag(run.info.run_id, "mlflow.note.content", note)
        client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_name)
    return ended


def use_experiment(name: str) -> None:
    """Make `name` the active experiment, described, and shown in the UI's Model-training mode."""
    experiment = mlflow.set_experiment(name)
    relocate_embedded_store()  # a new experiment (and the store's first) is recorded with absolute paths
    wanted = {"mlflow.note.content": EXPERIMENT_DESCRIPTIONS[name], "mlflow.experimentKind": "custom_model_development"}
    for key, value in wanted.items():
        if experiment.tags.get(key) != value:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)


@contextlib.contextmanager
def run(name: str, tags: dict[str, str], params: dict | None = None, experiment: str = EXPERIMENT) -> Iterator[mlflow.ActiveRun]:
    """A run in `experiment`; under `mlflow run`, a child of the project's run.

    Inside another run of this stage (a variant's run), it is that run's child.
    """
    nested = mlflow.active_run() is not None
    tags = {**tags, **process_tags()}
    if not nested:
        check_store_fits_workspace()
        use_experiment(experiment)
        stage = tags.get("dvc_stage")
        for abandoned in end_abandoned_runs(stage) if stage else []:
            print(f"{stage}: run '{abandoned}' was left RUNNING by a process that is gone: ended it as KILLED")
        # `mlflow run` hands its run to us through MLFLOW_RUN_ID; logging into it directly would
        # pile every stage into one run, so each stage becomes its child instead.
        parent = os.environ.pop("MLFLOW_RUN_ID", None)
        if parent:
            tags = {**tags, "mlflow.parentRunId": parent}
    with mlflow.start_run(run_name=name, nested=nested, tags={"git_commit": git_commit(), **tags}) as active:
        try:
            if params:
                mlflow.log_params(_logged_params(params))
            yield active
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM under stage.stop_on_sigterm()
            mlflow.end_run(status="KILLED")  # not FAILED, and never left RUNNING
            raise


def log_datasets(splits: dict[str, tuple[np.ndarray, np.ndarray, Path]]) -> None:
    """Record the exact data trained on (name, digest, source file) as MLflow dataset inputs."""
    for context, (x, y, source) in splits.items():
        with warnings.catch_warnings():
            # MLflow registers its local-file source under two schemes and warns that a path matches both.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_numpy(x, targets=y, source=str(source), name=f"mnist-{context}")
        mlflow.log_input(dataset, context=context)


def _logged_params(params: dict) -> dict[str, str]:
    """As the UI shows them best: `hidden_layers` as 512-256-128, with numeric `depth` and `width`."""
    logged = {key: json.dumps(value) if isinstance(value, list) else str(value) for key, value in params.items()}
    if "hidden_layers" in params:
        layers = params["hidden_layers"]
        logged.update(hidden_layers="-".join(map(str, layers)), depth=str(len(layers)), width=str(max(layers)))
    return logged


@contextlib.contextmanager
def run_per_seed(variant: str, seeds: list[int], tags: dict[str, str], params: dict) -> Iterator[dict[int, str]]:
    """Child runs of the active (variant) run, one per seed, open together while their copies train:
    their run ids by seed. Finished together, or marked KILLED / FAILED together."""
    client, parent = mlflow.MlflowClient(), mlflow.active_run().info
    commit, where = git_commit(), process_tags()
    run_ids: dict[int, str] = {}
    try:
        for seed in seeds:
            child = client.create_run(
                parent.experiment_id,
                run_name=f"{variant} seed {seed}",
                tags={"mlflow.parentRunId": parent.run_id, "git_commit": commit, **where, **tags},
            )
            run_ids[seed] = child.info.run_id
            logged = _logged_params({**params, "seed": seed})
            client.log_batch(run_ids[seed], params=[Param(key, value) for key, value in logged.items()])
        yield run_ids
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"  # Ctrl-C or SIGTERM: KILLED
        for run_id in run_ids.values():
            client.set_terminated(run_id, status)
        raise
    for run_id in run_ids.values():
        if client.get_run(run_id).info.status == "RUNNING":  # not a replicate that failed (fail_run)
            client.set_terminated(run_id, "FINISHED")


def fail_run(run_id: str, reason: str) -> None:
    """End a replicate's (or a variant's) run as FAILED at once, saying why (`loss became nan at epoch 3`)."""
    client = mlflow.MlflowClient()
    client.set_tag(run_id, FAILURE_TAG, reason)
    client.set_tag(run_id, "mlflow.note.content", f"Failed: {reason}. Left out of the ensemble and the comparison's statistics.")
    client.set_terminated(run_id, "FAILED")


class EpochMetrics(keras.callbacks.Callback):
    """Logs each replicate's epoch metrics into its run, step = epoch number (1-based, as in history.csv).

    split_logs turns Keras' logs into metrics per seed. mlflow.keras.MlflowCallback counts epochs
    from 0, logs into one run, and logs every validation pass again as step-less `validation_*`
    metrics, so this callback replaces it.
    """

    def __init__(self, run_ids: dict[int, str], split_logs: Callable[[dict], dict[int, dict[str, float]]]):
        super().__init__()
        self.run_ids, self.split_logs = run_ids, split_logs

    def on_epoch_end(self, epoch, logs=None):
        # Synchronous: MLflow's asynchronous logging costs more when the run ends than it saves here.
        timestamp, client = int(time.time() * 1000), mlflow.MlflowClient()
        for seed, metrics in self.split_logs(logs or {}).items():
            # A diverged replicate's NaN is said by its run's failure, not charted.
            batch = [Metric(name, float(value), timestamp, epoch + 1) for name, value in metrics.items() if np.isfinite(value)]
            client.log_batch(self.run_ids[seed], metrics=batch)


def record_replicate(run_id: str, metrics: dict[str, float], model_file: Path) -> None:
    """What a trained replicate adds to its run: its summary metrics (the final ones are its
    per-epoch metrics' last step) and its model file."""
    timestamp, client = int(time.time() * 1000), mlflow.MlflowClient()
    client.log_batch(run_id, metrics=[Metric(name, value, timestamp, 0) for name, value in metrics.items()])
    client.log_artifact(run_id, str(model_file))


def record_variant(
    variant: str,
    param_count: int,
    epoch_stats: pd.DataFrame | None,
    train_seconds: float,
    figures: list[Path],
    summary: str,
    model_files: dict[int, Path],
    example: np.ndarray,
) -> int | None:
    """What a variant's run holds once its replicates are trained: the per-epoch mean and standard
    deviation of every metric (step = epoch; `val_accuracy`, `val_accuracy_std`, ...), the seeds'
    total training time, figures, summary, and the registered seed ensemble of its finished
    replicates (`model_files`): its version, or None when every replicate diverged."""
    run_id = mlflow.active_run().info.run_id
    timestamp = int(time.time() * 1000)
    per_epoch = [
        Metric(name, float(value), timestamp, int(epoch))
        for epoch, row in (epoch_stats.iterrows() if epoch_stats is not None else [])
        for name, value in row.items()
        if np.isfinite(value)  # one replicate: no standard deviation
    ]
    mlflow.MlflowClient().log_batch(run_id, metrics=per_epoch)
    mlflow.log_param("param_count", param_count)
    mlflow.log_metric("train_seconds", train_seconds)
    for figure in figures:
        mlflow.log_artifact(str(figure))
    mlflow.log_text(summary, "model_summary.txt")
    if not model_files:
        return None
    return log_and_register_model(model_files, variant, example)


def record_evaluation(metrics: dict[str, float], table, files: list[Path]) -> None:
    """What evaluate leaves in its run: the champion's metrics and the comparison."""
    mlflow.log_metrics(metrics)
    mlflow.log_table(table, "comparison.json")  # shown as a table in the run's artifacts view
    for path in files:
        mlflow.log_artifact(str(path))


def record_comparison(
    results: dict[str, dict[str, float]], descriptions: dict[str, str], versions: dict[str, int], champion: str, evaluation: str
) -> dict[str, str]:
    """What evaluate (its run: `evaluation`) adds where users look: on each variant's run and on
    its registered version (the version's logged model) its test metrics, and the tag
    `comparison`; the version's description; the tag champion, true on the champion's run and
    false on the others and on former champions; the experiment's view of the compared runs. The
    variant runs' ids."""
    client, timestamp = mlflow.MlflowClient(), int(time.time() * 1000)
    run_ids = {}
    for variant, version in versions.items():
        model_version = client.get_model_version(REGISTERED_MODEL, str(version))
        run_ids[variant] = model_version.run_id
        model_id = logged_model_id(model_version)
        metrics = [Metric(name, value, timestamp, 0, model_id=model_id) for name, value in results[variant].items()]
        client.log_batch(model_version.run_id, metrics=metrics, tags=[RunTag(COMPARISON_TAG, evaluation)])
        client.update_model_version(REGISTERED_MODEL, str(version), description=descriptions[variant])
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    formers = {run.info.run_id for run in client.search_runs([experiment_id], f"tags.{CHAMPION_TAG} = 'true'")}
    # Set, never deleted: evaluates running side by side (queued experiments) may reach the same run.
    for run_id in formers | set(run_ids.values()):
        client.set_tag(run_id, CHAMPION_TAG, "true" if run_id == run_ids[champion] else "false")
    client.update_registered_model(REGISTERED_MODEL, description=REGISTERED_MODEL_DESCRIPTION)
    # A view the UI opens by name (`?viewStateShareKey=`): the compared runs, best first, with their results.
    view = {
        "searchFilter": f"tags.{COMPARISON_TAG} = '{evaluation}'",
        "orderByKey": "metrics.`val_accuracy`",
        "orderByAsc": False,
        "selectedColumns": [*(f"params.`{name}`" for name in VIEW_PARAMS), *(f"metrics.`{name}`" for name in VIEW_METRICS), f"tags.`{CHAMPION_TAG}`"],
    }
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{COMPARISON_TAG}", json.dumps(view))
    return run_ids


def logged_model_id(model_version) -> str | None:
    """The logged model a registered version came from (MLflow 3 names it in the version's source,
    `models:/m-...`, and leaves `model_id` empty here): its metrics show on the version's page."""
    if model_version.model_id:
        return model_version.model_id
    source = model_version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def ui_links(run_ids: list[str]) -> dict[str, str]:
    """Where the MLflow UI shows the comparison: the experiment in Model-training mode, the
    compare view of `run_ids`, the registered model. For `mlflow ui` on its default address,
    or the tracking server's own (never its credentials)."""
    uri = mlflow.get_tracking_uri()
    base = without_credentials(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    experiment_id = mlflow.MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id
    compare = urllib.parse.urlencode({"runs": json.dumps(run_ids, separators=(",", ":")), "experiments": json.dumps([experiment_id])})
    return {
        "experiment": f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={COMPARISON_TAG}&workflowType=machine_learning",
        "compare": f"{base}/#/compare-runs?{compare}",
        "registry": f"{base}/#/models/{REGISTERED_MODEL}",
    }


def serving_requirements() -> list[str]:
    """The served model's pip requirements: what it imports, at the versions installed here."""
    pins = []
    for name in SERVING_DISTRIBUTIONS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue  # tensorflow-cpu here, tensorflow on a GPU machine
    return pins


def log_and_register_model(model_files: dict[int, Path], variant: str, example: np.ndarray) -> int:
    """Log the variant's seed ensemble (one member per seed) into the active run as the served
    model, register it, point the variant's alias at it. A member that is not a readable Keras
    model of finite weights is refused: nothing unservable is registered."""
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


def ensure_registered(model_files: dict[str, dict[int, Path]], example: np.ndarray, stage: str) -> tuple[dict[str, int], list[str]]:
    """Each variant's registered seed ensemble of exactly `model_files` (its finished replicates),
    its alias pointed there; what the store lacks or cannot serve (lost, replaced, or new serving
    code) is logged again from DVC's files, in a run of its own. A variant without files loses its
    alias. The versions, and the variants registered again."""
    versions = find_registered_versions({variant: files for variant, files in model_files.items() if files}, stage)
    again = []
    for variant, files in model_files.items():
        if not files:  # every replicate failed: nothing to serve under its name
            drop_alias(variant)
        elif versions[variant] is not None:
            point_alias(variant, versions[variant])
        else:
            print(f"{stage}: registering {variant} again from models/{variant}/ (the registry has no servable version of these models and serving code)")
            with run(variant, {"dvc_stage": f"train@{variant}", "registered_by": stage}):
                versions[variant] = log_and_register_model(files, variant, example)
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


def set_champion(version: int, variant: str) -> None:
    point_alias(CHAMPION_ALIAS, version)
    mlflow.MlflowClient().set_registered_model_tag(REGISTERED_MODEL, "champion_variant", variant)
