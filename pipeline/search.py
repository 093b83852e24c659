"""`make search`: an Optuna study over MLP designs, on the train and validation splits only.

Each trial samples a design from `search.space`, trains its `search.seeds` together through the
project's own training code, and reports its seeds' mean validation accuracy every epoch to a
median pruner, which stops hopeless trials early, comparing each at the same tenth of its own
epochs. The trial's score is that mean at its last epoch.

The study lives in an Optuna storage: this checkout's SQLite file by default, or a database every
worker on every host shares (`search.storage`, or OPTUNA_STORAGE): the same command started again,
here or elsewhere, joins the study. `search.trials` counts trials across all workers. A worker that
dies mid-trial stops its heartbeat: the next worker to start a trial marks it failed and runs its
design again, once. Workers started together draw different designs (TrialSeededSampler), and a
design drawn twice is trained once: the second trial takes the first one's scores.

    python -m pipeline.search
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import optuna
import pandas as pd
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from pipeline import plots, stage, store, studies, tracking, training
from pipeline.config import MAX_VARIANT_NAME, Params, SearchSpace, VariantSpec, load_params
from pipeline.data import load_split
from pipeline.errors import PipelineError, without_credentials
from pipeline.files import atomic_write
from pipeline.paths import PROCESSED_DIR, SEARCH_REPORTS_DIR, split_path

# What counts against search.trials: every trial started, but the failed ones (a failure is retried,
# once); a queued (WAITING) trial counts once a worker starts it.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class TrialFailed(PipelineError):
    """A trial that cannot be scored: a replicate diverged, the worker's time ran out mid-trial, or
    the budget was taken by other workers before it started."""


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE whose draws for trial N come from a generator seeded by (sampler_seed, N).

    Optuna numbers trials atomically across workers: workers started together on one study draw
    different designs (one seed per worker would have them all draw the same), and one worker alone
    draws the same designs on every run. TPE's constant liar counts the other workers' running
    trials as bad ones, so it does not draw next to them either."""

    def __init__(self, seed: int, random_trials: int):
        self.seed, self.random_trials = seed, random_trials
        self.sampler = self.for_trial(0)

    def for_trial(self, number: int) -> optuna.samplers.TPESampler:
        seed = int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0])
        return optuna.samplers.TPESampler(n_startup_trials=self.random_trials, seed=seed, constant_liar=True)

    def before_trial(self, study, trial):
        self.sampler = self.for_trial(trial.number)
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.sampler.reseed_rng()


def twin_of(trial: optuna.Trial, design: dict, heartbeat_seconds: int) -> optuna.trial.FrozenTrial | None:
    """Another trial of the same design, once it has an outcome: complete or pruned, to take it from;
    None if there is none (or it failed: this trial trains the design). While the twin runs, wait for
    it, failing it if its worker's heartbeat stops, rather than train the same design twice."""
    while True:
        twins = [
            other for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
            if other.number != trial.number and other.user_attrs.get("spec") == design
        ]
        settled = [other for other in twins if other.state != TrialState.RUNNING]
        if settled or not twins:
            return min(settled, key=lambda other: other.number) if settled else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(trial.study)  # its worker may be gone
        time.sleep(heartbeat_seconds)


def failed(trial: optuna.Trial, reason: str) -> TrialFailed:
    """The trial's failure, its reason kept with it in the study (user attribute `failure`)."""
    trial.set_user_attr("failure", reason)
    return TrialFailed(reason)


LINEAR_DECAY_FRACTION = 1 / 3  # Rasmus et al.'s (2015): the last 50 of 150 epochs

# The published permutation-invariant MLP recipes (docs/search.md), in the space's terms: widths to
# the nearest power of two (1000 -> 1024, 1200 -> 1024), Adam throughout (the project's optimizer),
# epochs "max": the space's longest. A study starts with them; TPE explores around them.
RECIPES = {
    # The supervised baseline of "Semi-supervised learning with Ladder networks": BatchNorm MLP
    # 1000-500-250-250-250, Gaussian noise 0.3 on the input and after every normalisation, Adam 2e-3,
    # batch 100, the rate decayed linearly to zero over the last third; 0.80% test error.
    "rasmus-2015": {"widths": [1024, 512, 256, 256, 256], "batch_norm": True, "dropout": 0.0, "input_dropout": 0.0,
                    "max_norm": None, "learning_rate": 2e-3, "batch_size": 100, "initializer": "glorot_uniform",
                    "input_noise": 0.3, "hidden_noise": 0.3, "lr_schedule": "linear", "vat_epsilon": 0.0},
    # "Dropout" (JMLR 2014): 1200-1200, Dropout 0.2 on the pixels and 0.5 on hidden units, max-norm 3;
    # 0.94% test error (with SGD and momentum, ~2,000 epochs).
    "srivastava-2014": {"widths": [1024, 1024], "batch_norm": False, "dropout": 0.5, "input_dropout": 0.2,
                        "max_norm": 3.0, "learning_rate": 1e-3, "batch_size": 100, "initializer": "glorot_uniform",
                        "input_noise": 0.0, "hidden_noise": 0.0, "lr_schedule": "linear", "vat_epsilon": 0.0},
    # "Distributional smoothing with virtual adversarial training" (ICLR 2016): BatchNorm MLP
    # 1200-600-300-150, VAT at epsilon 2.1 (one power iteration), Adam 2e-3 decayed by 0.95 an epoch
    # (here the cosine, the nearest schedule the space has), batch 100, 100 epochs; 0.64% test error.
    "miyato-2016": {"widths": [1024, 512, 256, 128], "batch_norm": True, "dropout": 0.0, "input_dropout": 0.0,
                    "max_norm": None, "learning_rate": 2e-3, "batch_size": 100, "initializer": "glorot_uniform",
                    "input_noise": 0.0, "hidden_noise": 0.0, "lr_schedule": "cosine", "vat_epsilon": 2.1},
}


CHOICES = ("batch_norm", "max_norm", "batch_size", "initializer", "lr_schedule", "vat_epsilon")  # the space's lists of values


def recipe_trial(recipe: dict, space: SearchSpace) -> tuple[dict | None, str]:
    """A recipe as the parameters of a first trial (optuna's own names), fitted to the space: each
    value clipped into its range or the nearest choice, epochs the space's longest. None, and why,
    when the space cannot hold it (too few layers, widths out of range, no such choice)."""
    widths = recipe["widths"]
    if not space.depth[0] <= len(widths) <= space.depth[1]:
        return None, f"{len(widths)} hidden layers, outside search.space.depth {space.depth}"
    if not all(space.width[0] <= width <= space.width[1] for width in widths):
        return None, f"widths {widths} outside search.space.width {space.width}"
    for key in CHOICES:
        if recipe[key] not in getattr(space, key):
            return None, f"{key} {recipe[key]} not among search.space.{key} {getattr(space, key)}"
    params = {"depth": len(widths), **{f"log2_width_{layer}": int(np.log2(width)) for layer, width in enumerate(widths, start=1)}}
    for key in ("dropout", "input_dropout", "input_noise", "hidden_noise", "learning_rate"):
        params[key] = float(np.clip(recipe[key], *getattr(space, key)))
    for key in CHOICES:
        params[key] = recipe[key]
    params["epochs"] = space.epochs[1]
    return params, ""


def start_from_recipes(study: optuna.Study, settings) -> None:
    """The study's first trials: search.start_from's recipes, queued once (a worker starting later, or
    together, finds them queued or run: skip_if_exists)."""
    for name in settings.start_from:
        params, why = recipe_trial(RECIPES[name], settings.space)
        if params is None:
            print(f"search: recipe {name} left out: {why}")
            continue
        study.enqueue_trial(params, user_attrs={"recipe": name}, skip_if_exists=True)


def suggest_design(trial: optuna.Trial, space: SearchSpace) -> dict:
    """A design drawn from the space: each hidden layer's width a power of two (its exponent sampled);
    rates kept to two decimals and the learning rate to three significant digits, as a person writes them."""
    depth = trial.suggest_int("depth", *space.depth)
    low, high = (int(np.log2(width)) for width in space.width)
    widths = [2 ** trial.suggest_int(f"log2_width_{layer}", low, high) for layer in range(1, depth + 1)]

    def rate(name: str, bounds: list[float]) -> float:
        return float(np.clip(round(trial.suggest_float(name, *bounds), 2), *bounds))

    return {
        "hidden_layers": widths,
        "batch_norm": trial.suggest_categorical("batch_norm", space.batch_norm),
        "dropout": rate("dropout", space.dropout),
        "input_dropout": rate("input_dropout", space.input_dropout),
        "max_norm": trial.suggest_categorical("max_norm", space.max_norm),
        "learning_rate": float(f"{trial.suggest_float('learning_rate', *space.learning_rate, log=True):.3g}"),
        "batch_size": trial.suggest_categorical("batch_size", space.batch_size),
        "epochs": trial.suggest_int("epochs", *space.epochs),
        "initializer": trial.suggest_categorical("initializer", space.initializer),
        "input_noise": rate("input_noise", space.input_noise),
        "hidden_noise": rate("hidden_noise", space.hidden_noise),
        **schedule(trial.suggest_categorical("lr_schedule", space.lr_schedule)),
        "vat_epsilon": trial.suggest_categorical("vat_epsilon", space.vat_epsilon),
    }


def schedule(name: str) -> dict:
    """A design's learning-rate schedule; linear's decay fraction is the recipe's, not searched."""
    return {"lr_schedule": name, "decay_fraction": LINEAR_DECAY_FRACTION if name == "linear" else 1.0}


def candidate_spec(params: Params, design: dict) -> VariantSpec:
    """The variant a design is: train's settings with the design's values (validated like any variant)."""
    shared = {key: value for key, value in params.train.model_dump().items() if key in VariantSpec.model_fields}
    return VariantSpec.model_validate({**shared, **design, "init_stddev": None})


def design_name(spec: VariantSpec, number: int) -> str:
    """A variant name that reads as its design, and the trial it came from:
    mlp-1024-512-bn-drop30-in20-norm3-t17; mlp-1024-512-256x3-bn-n30-hn30-lin-t0 (repeated widths as
    WxN; Gaussian noise on the pixels n, on hidden layers hn; linear or cosine schedules; VAT's
    epsilon vat, 2.1 as vat2p1). Cut to a variant name's 63 characters, the trial's number kept."""
    parts = ["mlp"]
    for width, run in itertools.groupby(spec.hidden_layers):
        count = len(list(run))
        parts.append(f"{width}x{count}" if count > 1 else str(width))
    parts += ["bn"] if spec.batch_norm else []
    parts += [f"drop{round(100 * spec.dropout)}"] if round(100 * spec.dropout) else []
    parts += [f"in{round(100 * spec.input_dropout)}"] if round(100 * spec.input_dropout) else []
    parts += [f"norm{spec.max_norm:g}".replace(".", "p")] if spec.max_norm else []
    parts += [f"n{round(100 * spec.input_noise)}"] if round(100 * spec.input_noise) else []
    parts += [f"hn{round(100 * spec.hidden_noise)}"] if round(100 * spec.hidden_noise) else []
    parts += [{"linear": "lin", "cosine": "cos"}[spec.lr_schedule]] if spec.lr_schedule != "constant" else []
    parts += [f"vat{spec.vat_epsilon:g}".replace(".", "p")] if spec.vat_epsilon else []
    while len("-".join([*parts, f"t{number}"])) > MAX_VARIANT_NAME:
        parts.pop()
    return "-".join([*parts, f"t{number}"])


def trial_params(params: Params, name: str, spec: VariantSpec) -> Params:
    """params as the training code reads them, for one trial: its one variant, the search's seeds."""
    train = params.train.model_copy(update={"seeds": params.search.seeds, "max_epochs": 0, "strategy": "none"})
    return params.model_copy(update={"train": train, "variants": {name: spec}})


TENTHS = 10  # the pruner's steps: tenths of a trial's own epochs


def tenths_done(epoch: int, epochs: int) -> int:
    """How many tenths of its `epochs` a trial has done after `epoch` (from 1): the pruner's step.
    Trials of different lengths, and schedules that decay over them, compare like with like: each
    at the same part of its own budget, not at the same epoch."""
    return TENTHS * epoch // epochs


class ReportEachEpoch(keras.callbacks.Callback):
    """Each epoch: the seeds' mean validation accuracy to the trial's MLflow run; to the pruner, at
    each tenth of the trial's epochs it completes (its step), which may stop the trial there, once
    past `warmup_epochs`. Past the worker's deadline the trial stops too."""

    def __init__(self, trial: optuna.Trial, run_id: str, seeds: list[int], deadline: float, warmup_epochs: int = 0):
        super().__init__()
        self.trial, self.run_id, self.seeds, self.deadline, self.warmup_epochs = trial, run_id, seeds, deadline, warmup_epochs
        self.values: list[float] = []
        self.pruned_at = self.out_of_time_at = None
        self.reported = 0

    def on_epoch_end(self, epoch, logs=None):
        per_seed = training.split_logs(logs or {}, self.seeds)
        accuracy = float(np.mean([per_seed[seed]["val_accuracy"] for seed in self.seeds]))
        metrics = {
            "val_accuracy": accuracy,
            "val_loss": float(np.mean([per_seed[seed]["val_loss"] for seed in self.seeds])),
            **{f"val_accuracy_seed_{seed}": per_seed[seed]["val_accuracy"] for seed in self.seeds},
        }
        tracking.log_trial_epoch(self.run_id, epoch + 1, metrics)
        self.values.append(accuracy)
        step = tenths_done(epoch + 1, self.params["epochs"])
        reported = step > self.reported
        if reported:
            self.trial.report(accuracy, step)
            self.reported = step
        if epoch + 1 == self.params["epochs"]:  # finished: nothing left to stop
            return
        if reported and epoch + 1 > self.warmup_epochs and self.trial.should_prune():
            self.pruned_at, self.model.stop_training = epoch + 1, True
        elif time.monotonic() > self.deadline:
            self.out_of_time_at, self.model.stop_training = epoch + 1, True


def counted_before(study: optuna.Study, number: int) -> int:
    """Trials numbered below `number` that count against the budget (Optuna numbers them atomically)."""
    return sum(1 for trial in study.get_trials(deepcopy=False, states=COUNTED) if trial.number < number)


def objective_for(params: Params, search_run: str, splits: tuple, deadline: float):
    search = params.search
    strategy = training.distribution_strategy("none")
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        if counted_before(trial.study, trial.number) >= search.trials:  # another worker took the last one
            trial.study.stop()
            raise failed(trial, f"beyond the budget of {search.trials} trials (another worker started the last one): not run")
        spec = candidate_spec(params, suggest_design(trial, search.space))
        name = design_name(spec, trial.number)
        design = json.loads(spec.model_dump_json())  # as the study stores it
        logged = {**spec.model_dump(), "variant": name, "seeds": search.seeds}
        twin = twin_of(trial, design, search.heartbeat_seconds)
        run_id = tracking.trial_run(search_run, search.study, trial.number, logged)
        for key, value in {"variant": name, "spec": design, "mlflow_run_id": run_id, "worker": worker}.items():
            trial.set_user_attr(key, value)
        if twin is not None:
            return outcome_of_twin(trial, twin, run_id)
        reporter = ReportEachEpoch(trial, run_id, search.seeds, deadline, search.pruner.warmup_epochs)
        guard = training.StopOnDivergence(search.seeds)
        print(f"search: trial {trial.number} {name}: {spec.epochs} epochs at most, seeds {search.seeds}")
        started = time.perf_counter()
        try:
            training.train_group(trial_params(params, name, spec), name, search.seeds, strategy, *splits, [reporter, guard], verbose=0)
        except BaseException as error:  # Ctrl-C, SIGTERM, out of memory: Optuna marks the trial failed
            tracking.end_trial_run(run_id, "failed", note=f"Failed: {type(error).__name__}: {error}")
            raise
        finally:
            keras.backend.clear_session()  # one graph per trial, not all of them
        seconds = time.perf_counter() - started
        trial.set_user_attr("train_seconds", round(seconds, 1))
        trial.set_user_attr("epochs_trained", len(reporter.values))
        if guard.diverged:
            seed, (epoch, reason) = next(iter(guard.diverged.items()))
            tracking.end_trial_run(run_id, "failed", note=f"Failed: seed {seed}'s {reason}")
            raise failed(trial, f"seed {seed}'s {reason}")
        if reporter.out_of_time_at:
            note = f"Failed: the worker's time (search.timeout_minutes) ran out at epoch {reporter.out_of_time_at} of {spec.epochs}"
            tracking.end_trial_run(run_id, "failed", note=note)
            raise failed(trial, note.removeprefix("Failed: "))
        if reporter.pruned_at:
            note = (f"Pruned at epoch {reporter.pruned_at} of {spec.epochs}: validation accuracy {reporter.values[-1]:.4f}, below the median "
                    f"of earlier trials at the same part ({reporter.reported}/{TENTHS}) of their own epochs")
            tracking.end_trial_run(run_id, "pruned", reporter.values[-1], note)
            print(f"search: trial {trial.number} {note.lower()} ({seconds:.0f} s)")
            raise optuna.TrialPruned(note)
        value = reporter.values[-1]
        tracking.end_trial_run(run_id, "complete", value, f"Complete: mean validation accuracy {value:.4f} over seeds {search.seeds}")
        print(f"search: trial {trial.number} {name}: val_accuracy {value:.4f} ({seconds:.0f} s)")
        return value

    return objective


def outcome_of_twin(trial: optuna.Trial, twin: optuna.trial.FrozenTrial, run_id: str) -> float:
    """The trial's outcome taken from a trial of the same design (the same seeds and data: the same
    training): its per-epoch values, and its score or its pruning. Nothing is trained."""
    trial.set_user_attr("same_design_as", twin.number)
    for epoch, value in sorted(twin.intermediate_values.items()):
        trial.report(value, epoch)
    for key in ("epochs_trained", "train_seconds"):
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    note = f"the same design as trial {twin.number}: its outcome taken, not trained again"
    print(f"search: trial {trial.number} is {note}")
    if twin.state == TrialState.PRUNED:
        tracking.end_trial_run(run_id, "pruned", twin.intermediate_values[max(twin.intermediate_values)] if twin.intermediate_values else None, f"Pruned: {note}")
        raise optuna.TrialPruned(note)
    tracking.end_trial_run(run_id, "complete", twin.value, f"Complete: {note} (mean validation accuracy {twin.value:.4f})")
    return twin.value


DESIGN_COLUMNS = [
    "hidden_layers", "batch_norm", "dropout", "input_dropout", "max_norm", "learning_rate", "batch_size", "epochs", "initializer",
    "input_noise", "hidden_noise", "lr_schedule", "vat_epsilon",
]


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """Every trial of the study, best first: its design as it trained (the spec, rounded as written,
    not Optuna's raw draws), state, score, epochs trained, time and worker."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        spec = trial.user_attrs.get("spec") or {}
        design = {key: spec.get(key) for key in DESIGN_COLUMNS}
        if design["hidden_layers"]:
            design["hidden_layers"] = "-".join(map(str, design["hidden_layers"]))
        rows.append({
            "trial": trial.number, "variant": trial.user_attrs.get("variant"), "state": trial.state.name.lower(),
            "val_accuracy": trial.value, "epochs_trained": trial.user_attrs.get("epochs_trained"),
            "train_seconds": trial.user_attrs.get("train_seconds"), **design, "worker": trial.user_attrs.get("worker"),
            "last_val_accuracy": max(trial.intermediate_values.items())[1] if trial.intermediate_values else np.nan,
        })
    columns = ["trial", "variant", "state", "val_accuracy", "epochs_trained", "train_seconds", *DESIGN_COLUMNS, "worker", "last_val_accuracy"]
    table = pd.DataFrame(rows, columns=columns)
    # Best first: complete trials by their score, then pruned ones by their last value, then the rest.
    order = table["state"].map({"complete": 0, "pruned": 1}).fillna(2)
    table = table.assign(_order=order).sort_values(["_order", "last_val_accuracy", "trial"], ascending=[True, False, True])
    return table.drop(columns="_order")


def accuracy_cost_front(trials: pd.DataFrame) -> pd.DataFrame:
    """The complete trials no other beats on both counts: none both faster to train and better on
    validation. Fastest first; each is better than every faster one (what its extra seconds buy)."""
    complete = trials[(trials["state"] == "complete") & trials["train_seconds"].notna()]
    by_cost = complete.sort_values(["train_seconds", "val_accuracy"], ascending=[True, False], kind="stable")
    best_so_far = by_cost["val_accuracy"].cummax().shift(fill_value=-np.inf)
    return by_cost[by_cost["val_accuracy"] > best_so_far]


def write_reports(study: optuna.Study, directory: Path = SEARCH_REPORTS_DIR) -> list[Path]:
    """reports/search/: the trials' table, the accuracy-cost front (table and chart) and Optuna's own
    figures (PNG: they draw offline)."""
    table = trials_table(study)
    front = accuracy_cost_front(table)
    written = [directory / "trials.csv", directory / "front.csv"]
    with atomic_write(written[0], "w") as f:
        table.to_csv(f, index=False)
    with atomic_write(written[1], "w") as f:
        front.to_csv(f, index=False)
    if not front.empty:
        plots.save_png(plots.accuracy_cost_chart(table, front), directory / "front.png")
        written.append(directory / "front.png")
    for name, figure in plots.search_figures(study).items():
        plots.save_png(figure, directory / name)
        written.append(directory / name)
    return written


def search(params: Params, processed_dir: Path = PROCESSED_DIR) -> optuna.Study:
    settings = params.search
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module's lines say what each trial did
    storage = studies.open_storage(settings)  # an unreachable storage stops here, before any data is read
    store.create_sqlite_store()  # workers starting together on a new checkout: the first creates MLflow's tables
    splits = (load_split(split_path("train", processed_dir)), load_split(split_path("validation", processed_dir)))
    sampler = TrialSeededSampler(settings.sampler_seed, settings.random_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=settings.pruner.startup_trials)  # warmup: ReportEachEpoch's
    study = optuna.create_study(
        study_name=settings.study, storage=storage, sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True
    )
    start_from_recipes(study, settings)
    counted = len(study.get_trials(deepcopy=False, states=COUNTED))
    search_run = tracking.search_run(settings.study, {**settings.model_dump(exclude={"storage", "space"}), **settings.space.model_dump()})
    print(f"search: study {settings.study} in {without_credentials(studies.storage_url(settings)[0])}: {counted} of {settings.trials} trials so far")
    timeout = settings.timeout_minutes * 60 if settings.timeout_minutes else None
    deadline = time.monotonic() + (timeout or float("inf"))
    if counted < settings.trials:
        study.optimize(
            objective_for(params, search_run, splits, deadline),
            timeout=timeout,
            catch=(TrialFailed,),
            # Stop when the budget is taken, by any worker; or when as many trials failed.
            callbacks=[MaxTrialsCallback(settings.trials, states=COUNTED), MaxTrialsCallback(settings.trials, states=(TrialState.FAIL,))],
            gc_after_trial=True,
        )
    files = write_reports(study)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = {"best_val_accuracy": study.best_value, "best_trial": study.best_trial.number} if complete else {}
    states = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    tracking.record_search(search_run, {**best, **{f"trials_{name}": count for name, count in states.items()}}, files, finished=not running)
    summary = ", ".join(f"{count} {name}" for name, count in states.items())
    if complete:
        print(f"search: {summary}; best trial {study.best_trial.number} ({study.best_trial.user_attrs['variant']}): val_accuracy {study.best_value:.4f}")
    else:
        print(f"search: {summary}; no trial complete yet")
    return study


def main() -> None:
    search(load_params())


if __name__ == "__main__":
    stage.run("search", main)
