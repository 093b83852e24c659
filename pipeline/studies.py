"""Where a search's Optuna study lives: this checkout's SQLite file, or a database workers share.

The search (pipeline.search) runs trials in it; promote (pipeline.promote) reads its best.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from pipeline import tracking
from pipeline.config import SearchParams
from pipeline.errors import SetupError, without_credentials
from pipeline.paths import SEARCH_DB

STORAGE_VARIABLE = "OPTUNA_STORAGE"
CREATE_ATTEMPTS = 3


def storage_url(search: SearchParams) -> tuple[str, str]:
    """The study's storage URL and where it was set: OPTUNA_STORAGE, search.storage, or the local file."""
    if os.environ.get(STORAGE_VARIABLE):
        url, source = os.environ[STORAGE_VARIABLE], STORAGE_VARIABLE
    elif search.storage:
        url, source = search.storage, "search.storage"
    else:
        return f"sqlite:///{SEARCH_DB}", "the default"
    # SQLAlchemy's postgresql:// means psycopg2; the project installs psycopg 3.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url, source


def open_storage(search: SearchParams) -> RDBStorage:
    """The study's storage, its schema created if new; a one-line SetupError if it cannot be reached."""
    url, source = storage_url(search)
    engine = {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).parent
        if source == "the default":
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():  # a typo would otherwise grow a folder tree and run the study there
            raise SetupError(f"the study's storage {url} (from {source}): the folder {folder} does not exist; create it or fix {source}")
        engine["connect_args"] = {"timeout": 60}  # local workers take turns at the file
    elif url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental since Optuna 2.9
                return RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=search.heartbeat_seconds,
                    grace_period=2 * search.heartbeat_seconds,
                    heartbeat_stale_trial_callback=fail_abandoned_trial,
                )
        except sqlalchemy.exc.SQLAlchemyError as error:
            # Workers starting together on a new database race to create Optuna's tables
            # (optuna/optuna#1092, #4621): the loser's CREATE fails on what the winner just made,
            # and a moment later the schema is there.
            if attempt + 1 < CREATE_ATTEMPTS and schema_race(error):
                time.sleep(1 + attempt)
                continue
            raise SetupError(storage_failure(url, source, error)) from None
        except Exception as error:  # the driver's, or a URL SQLAlchemy cannot parse
            raise SetupError(storage_failure(url, source, error)) from None


def schema_race(error: Exception) -> bool:
    """Whether `error` is another worker creating the same tables at the same moment."""
    text = str(error)
    return isinstance(error, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) or "already exists" in text


def storage_failure(url: str, source: str, error: Exception) -> str:
    reason = " ".join(str(error).split("\n")[0].split())[:300] or type(error).__name__
    return (
        f"cannot open the study's storage {without_credentials(url)} (from {source}): {without_credentials(reason)}. "
        f"Start the database or fix {source} (docs/search.md)"
    )


def fail_abandoned_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A trial whose worker stopped its heartbeat (killed, out of memory, a lost host): Optuna has
    marked it failed; its MLflow run says so, and its design is queued again, once."""
    if run_id := trial.user_attrs.get("mlflow_run_id"):
        note = f"Failed: its worker ({trial.user_attrs.get('worker', 'unknown')}) stopped answering mid-trial (killed, or its host was lost)."
        tracking.end_trial_run(run_id, "failed", note=note)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # experimental since Optuna 2.8, and kept
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)
    print(f"search: trial {trial.number} was abandoned by its worker: marked failed, its design queued again")
