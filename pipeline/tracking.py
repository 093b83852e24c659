"""The stages' runs in MLflow: experiments, runs and their params, per-epoch metrics, artifacts.

Which store, and its checks: store.py. The registered model: registry.py. The UI's saved view and
links: views.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import keras
import mlflow
import numpy as np
import pandas as pd
import psutil
from mlflow.entities import Metric, Param, RunTag

from pipeline.store import check_store_fits_workspace, relocate_embedded_store

# Stage output goes to DVC's log, not a terminal: no artifact progress bars in it, and not
# MLflow's "View run at" links, which repeat the tracking URI, credentials included.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

EXPERIMENT = "mnist-mlp"
EVALUATION_EXPERIMENT = "mnist-mlp-evaluation"  # evaluate's runs: kept out of the list of training runs
SEARCH_EXPERIMENT = "mnist-mlp-search"  # `make search`: a run per study, a child run per trial
STUDY_TAG, TRIAL_TAG, STATE_TAG = "optuna_study", "optuna_trial", "state"
# A trial's Optuna state, and the MLflow status its run ends with (a pruned trial was stopped early: KILLED).
TRIAL_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
CHAMPION_TAG = "champion"
COMPARISON_TAG = "comparison"  # on a variant's run: the evaluate run that compared it last
PROJECT_RUN_TAG = "mlflow_project_run"  # on a stage's run under `mlflow run`: the project's own run
FAILURE_TAG = "failure"  # on a FAILED replicate's run: why (a diverged loss, and the epoch)
# Where a run's process runs: the next run of its stage on this host ends it KILLED if that process is gone.
HOST_TAG, PID_TAG, PROCESS_STARTED_TAG = "host", "pid", "process_started"
# CPU and memory of a training run, sampled this often: 12 to 120 points for runs of one to ten minutes.
SYSTEM_METRICS_SECONDS = 5
# What the MLflow UI shows atop each experiment (its note) and in the registry.
EXPERIMENT_DESCRIPTIONS = {
    EXPERIMENT: (
        "Training runs of the MNIST multilayer perceptrons: one run per variant (`dvc repro` stage "
        "`train@VARIANT`), with a child run per seed. A variant's run holds the per-epoch mean and standard "
        "deviation over its seeds (`val_accuracy`, `val_accuracy_std`, ...), the machine's CPU and memory "
        "(`system/...`) and, once `evaluate` has run, how its seed ensemble, what is served, did: "
        "`ensemble_val_accuracy`, `ensemble_test_accuracy` with its 95% interval over images "
        "(`ensemble_test_ci_low`, `ensemble_test_ci_high`), `ensemble_test_ece`, `p_vs_champion`, MLflow's "
        "classifier evaluation (`confusion_matrix`, `per_class_metrics`), and its single replicates' "
        "`test_accuracy_mean` with its interval over seeds. The champion, the best seed ensemble on "
        "validation, carries the tag `champion`.\n\n"
        "To compare: the links `evaluate` prints open this list filtered to the compared runs (tag "
        "`comparison`), the best ensemble on validation first, and the compare view of those runs (parallel "
        "coordinates of `depth`, `width`, `dropout` against the test accuracy). "
        f"Each comparison is a run of the experiment `{EVALUATION_EXPERIMENT}`, with its table."
    ),
    SEARCH_EXPERIMENT: (
        "`make search`: one run per Optuna study, shared by every worker on every host, with the search's "
        "settings, its best trial (`best_val_accuracy`) and Optuna's figures (optimisation history, parameter "
        "importances, per-epoch values); a child run per trial with its design, its seeds' mean validation "
        "accuracy per epoch (`val_accuracy`) and its state (tag `state`: complete, pruned or failed; pruned "
        "runs end KILLED). The search reads the train and validation splits only. Its best designs, once "
        f"promoted, are trained and compared in `{EXPERIMENT}`."
    ),
    EVALUATION_EXPERIMENT: (
        "One run per `evaluate` stage: the comparison of the variants (`comparison.json`, `comparison.md`, "
        "`comparison.png`), where they differ (`per_class.csv`, `calibration.csv`, `confused_pairs.csv`, "
        "`reliability.png`, `mistakes.png`, `disagreements.png`) and the champion's metrics. The variants' "
        f"runs are in the experiment `{EXPERIMENT}`."
    ),
}


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def params_hash(used: dict) -> str:
    return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()[:16]


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


def again_if_raced(keys: tuple[str, ...], call, *args, **kwargs):
    """`call(*args, **kwargs)`, once more if it lost an insert race on one of `keys`: a server looks a row up, then
    inserts it, so two processes writing the same row at the same moment (queued experiments, search
    workers) collide on its key. The row exists now, and the second call finds it."""
    try:
        return call(*args, **kwargs)
    except mlflow.exceptions.MlflowException as error:
        if not any(key in str(error) for key in keys):
            raise
        return call(*args, **kwargs)


def use_experiment(name: str) -> None:
    """Make `name` the active experiment, described, and shown in the UI's Model-training mode."""
    experiment = mlflow.set_experiment(name)
    relocate_embedded_store()  # a new experiment (and the store's first) is recorded with absolute paths
    wanted = {"mlflow.note.content": EXPERIMENT_DESCRIPTIONS[name], "mlflow.experimentKind": "custom_model_development"}
    for key, value in wanted.items():
        if experiment.tags.get(key) != value:
            again_if_raced(("experiment_tag_pk", "UNIQUE constraint failed: experiment_tags"),
                           mlflow.MlflowClient().set_experiment_tag, experiment.experiment_id, key, value)


@contextlib.contextmanager
def run(
    name: str, tags: dict[str, str], params: dict | None = None, experiment: str = EXPERIMENT, system_metrics: bool = False
) -> Iterator[mlflow.ActiveRun]:
    """A run in `experiment`; under `mlflow run`, tagged with the project's run (PROJECT_RUN_TAG). With system_metrics,
    MLflow samples the machine's CPU and memory into it every SYSTEM_METRICS_SECONDS.

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
        # `mlflow run` hands its run to us through MLFLOW_RUN_ID. Logging into it would pile every
        # stage into one run, and nesting under it would move the project's run into the training
        # experiment's list: each stage keeps its own top-level run, tagged with the project's.
        project_run = os.environ.pop("MLFLOW_RUN_ID", None)
        if project_run:
            tags = {**tags, PROJECT_RUN_TAG: project_run}
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
        mlflow.set_system_metrics_samples_before_logging(1)
    with mlflow.start_run(run_name=name, nested=nested, tags={"git_commit": git_commit(), **tags}, log_system_metrics=system_metrics) as active:
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
        again_if_raced(("dataset_pk", "UNIQUE constraint failed: datasets"), mlflow.log_input, dataset, context=context)


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
) -> None:
    """What a variant's run holds once its replicates are trained: the per-epoch mean and standard
    deviation of every metric (step = epoch; `val_accuracy`, `val_accuracy_std`, ...), the seeds'
    total training time, figures and summary. (Its seed ensemble is registered by registry.py.)"""
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


def record_evaluation(metrics: dict[str, float], table, files: list[Path]) -> None:
    """What evaluate leaves in its run: the champion's metrics and the comparison."""
    mlflow.log_metrics(metrics)
    mlflow.log_table(table, "comparison.json")  # shown as a table in the run's artifacts view
    for path in files:
        mlflow.log_artifact(str(path))


def record_results(
    results: dict[str, dict[str, float]], runs: dict[str, tuple[str, str | None]], champion: str, evaluation: str,
    retag_former_champions: bool = True,
) -> None:
    """What evaluate (its run: `evaluation`) adds to each variant's run `runs[variant]` (run id, and
    the logged model of its registered version, whose page shows them too): its test metrics and the
    tag `comparison`; the tag champion, true on the champion's run and false on the others and (on
    the main line, not for a DVC experiment) on former champions."""
    client, timestamp = mlflow.MlflowClient(), int(time.time() * 1000)
    for variant, (run_id, model_id) in runs.items():
        metrics = [Metric(name, value, timestamp, 0, model_id=model_id) for name, value in results[variant].items()]
        client.log_batch(run_id, metrics=metrics, tags=[RunTag(COMPARISON_TAG, evaluation)])
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    formers = {run.info.run_id for run in client.search_runs([experiment_id], f"tags.{CHAMPION_TAG} = 'true'")} if retag_former_champions else set()
    # Set, never deleted: evaluates running side by side (queued experiments) may reach the same run.
    champion_run = runs[champion][0]
    for run_id in formers | {run_id for run_id, _ in runs.values()}:
        client.set_tag(run_id, CHAMPION_TAG, "true" if run_id == champion_run else "false")


def log_classifier_evaluation(run_id: str, labels: np.ndarray, predicted: np.ndarray) -> None:
    """MLflow's own classifier evaluation of a variant's served ensemble on the test set, in the
    variant's run: its `confusion_matrix` and `per_class_metrics` artifacts and metrics (from the
    predictions evaluate computed: no model is loaded again; explainability off)."""
    data = pd.DataFrame({"label": labels, "prediction": predicted})
    trained = mlflow.MlflowClient().get_run(run_id).info
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)  # MLflow resumes runs of the active one only
    evaluator_log = logging.getLogger("mlflow.models.evaluation")
    level = evaluator_log.level
    evaluator_log.setLevel(logging.ERROR)  # its notes on what it inferred of the labels, three lines a variant
    with warnings.catch_warnings(), mlflow.start_run(run_id=run_id):
        warnings.simplefilter("ignore")  # MLflow's notes on the dataset's inferred schema
        mlflow.models.evaluate(
            data=data, targets="label", predictions="prediction", model_type="classifier",
            evaluator_config={"log_model_explainability": False, "label_list": list(range(10))},
        )
    evaluator_log.setLevel(level)
    # Resuming the run ended it again, now: its duration in the UI would be training plus evaluate's wait.
    mlflow.MlflowClient().set_terminated(run_id, trained.status, end_time=trained.end_time)


def search_run(study: str, params: dict) -> str:
    """The search's run: one per study, whichever worker on whichever host starts first. Two
    workers starting at once may both create one: the later deletes its own and joins the first."""
    check_store_fits_workspace()
    use_experiment(SEARCH_EXPERIMENT)
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name(SEARCH_EXPERIMENT).experiment_id

    def first() -> str | None:
        runs = client.search_runs([experiment_id], f"tags.{STUDY_TAG} = '{study}'", order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    if (existing := first()) is None:
        mine = client.create_run(experiment_id, run_name=study, tags={STUDY_TAG: study, "git_commit": git_commit()}).info.run_id
        client.log_batch(mine, params=[Param(key, value) for key, value in _logged_params(params).items()])
        existing = first()
        if existing != mine:
            client.delete_run(mine)
    client.update_run(existing, "RUNNING")  # again, when a worker joins a finished study
    return existing


def trial_run(search: str, study: str, number: int, params: dict) -> str:
    """A child run of the search's for one trial, with its design: its run id."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(search).info.experiment_id
    tags = {"mlflow.parentRunId": search, STUDY_TAG: study, TRIAL_TAG: str(number), STATE_TAG: "running", **process_tags()}
    run_id = client.create_run(experiment_id, run_name=f"trial {number}", tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(key, value) for key, value in _logged_params(params).items()])
    return run_id


def log_trial_epoch(run_id: str, epoch: int, metrics: dict[str, float]) -> None:
    """One epoch of a trial (step = epoch, 1-based): what the pruner judged it on."""
    timestamp = int(time.time() * 1000)
    batch = [Metric(name, float(value), timestamp, epoch) for name, value in metrics.items() if np.isfinite(value)]
    mlflow.MlflowClient().log_batch(run_id, metrics=batch)


def end_trial_run(run_id: str, state: str, value: float | None = None, note: str | None = None) -> None:
    """A trial's run ends with its state (complete, pruned, failed), its value if it has one, and why."""
    client = mlflow.MlflowClient()
    if value is not None and np.isfinite(value):
        client.log_metric(run_id, "objective", value)
    client.set_tag(run_id, STATE_TAG, state)
    if note:
        client.set_tag(run_id, "mlflow.note.content", note)
    client.set_terminated(run_id, TRIAL_STATUS[state])


def record_search(search: str, metrics: dict[str, float], files: list[Path], finished: bool) -> None:
    """What a worker leaves in the search's run when it stops: the best so far, the figures and the
    trials' table; the run ends FINISHED once no trial of the study is running."""
    client = mlflow.MlflowClient()
    timestamp = int(time.time() * 1000)
    client.log_batch(search, metrics=[Metric(name, value, timestamp, 0) for name, value in metrics.items() if np.isfinite(value)])
    for path in files:
        client.log_artifact(search, str(path))
    if finished:
        client.set_terminated(search, "FINISHED")
