"""Where a search's Optuna study lives: this checkout's SQLite file, or a database workers share.

The search (pipeline.search) runs trials in it; promote (pipeline.promote) reads its best.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback

from pipeline import tracking
from pipeline.config import SearchParams
from pipeline.errors import SetupError, without_credentials
from pipeline.paths import SEARCH_DB

STORAGE_VARIABLE = "OPTUNA_STORAGE"


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
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine["connect_args"] = {"timeout": 60}  # local workers take turns at the file
    elif url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds
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
    except Exception as error:  # SQLAlchemy's, the driver's, or a URL it cannot parse
        reason = " ".join(str(error).split("\n")[0].split())[:300] or type(error).__name__
        raise SetupError(
            f"cannot open the study's storage {without_credentials(url)} (from {source}): {without_credentials(reason)}. "
            f"Start the database or fix {source} (docs/search.md)"
        ) from None


def fail_abandoned_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A trial whose worker stopped its heartbeat (killed, out of memory, a lost host): Optuna has
    marked it failed; its MLflow run says so, and its design is queued again, once."""
    if run_id := trial.user_attrs.get("mlflow_run_id"):
        note = f"Failed: its worker ({trial.user_attrs.get('worker', 'unknown')}) stopped answering mid-trial (killed, or its host was lost)."
        tracking.end_trial_run(run_id, "failed", note=note)
    RetryFailedTrialCallback(max_retry=1)(study, trial)
    print(f"search: trial {trial.number} was abandoned by its worker: marked failed, its design queued again")
