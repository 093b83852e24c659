"""Which MLflow store the stages use, checked before any work.

The store is MLflow's own choice: MLFLOW_TRACKING_URI if set, else its default
(`sqlite:///mlflow.db` in the working directory, the repository root under DVC). That embedded
store keeps its artifacts in the repository's own `mlruns/`, recorded as relative paths, so a moved
or copied repository reads and writes its own (relocate_embedded_store).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import urllib.parse
from pathlib import Path

import mlflow

from pipeline.errors import SetupError, without_credentials

STORE_CHECK_SECONDS = 10
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


def create_sqlite_store() -> None:
    """Create a sqlite store's tables, once, whoever comes first. Stages or search workers started
    together on a new checkout would race to run MLflow's migrations in one file and all but one die
    ("Online migration expected to match one row ... in 'alembic_version'"): the first creates them
    under an exclusive flock of the file (sqlite's own locks are fcntl's, apart), the rest then find them."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    database = Path(urllib.parse.unquote(uri.removeprefix("sqlite:///").split("?")[0]))
    if not database.parent.is_dir():
        raise SetupError(f"MLFLOW_TRACKING_URI={uri}: the folder {database.parent} does not exist; create it or fix the URI")
    with open(database, "ab") as handle:  # an empty file is a new sqlite database
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            client = mlflow.MlflowClient()
            client.search_experiments(max_results=1)  # the tracking tables
            client.search_registered_models(max_results=1)  # the registry's
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_store() -> None:
    """Before any work: the store has a registry and fits this workspace, the embedded store's
    artifacts are this checkout's own, and a tracking server answers within STORE_CHECK_SECONDS,
    once, not after MLflow's minutes of retries. Its failure names the server's host and port,
    never its credentials."""
    check_store_has_registry()
    check_store_fits_workspace()
    create_sqlite_store()
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
