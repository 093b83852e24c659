"""What Optuna itself costs a search as its study grows: TPE's ask and the median pruner's check.

A SQLite study is filled with N finished trials over the default search space (random designs,
five reported epochs each); then, five times, a new trial is asked and its design suggested
(pipeline.search.suggest_design), one epoch reported and the pruner asked. Medians are printed.
Training time is not in it: a trial's is in the search's own trials.csv.

    python -m benchmarks.search [--trials 100,1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from pipeline.config import SearchSpace, load_params
from pipeline.search import suggest_design

ROUNDS = 5


def finished_trial(space: SearchSpace, rng: np.random.Generator) -> optuna.trial.FrozenTrial:
    """A complete three-layer trial drawn at random from the space, with five epochs reported."""
    low, high = (int(np.log2(width)) for width in space.width)
    distributions = {
        "depth": IntDistribution(*space.depth),
        **{f"log2_width_{layer}": IntDistribution(low, high) for layer in (1, 2, 3)},
        "batch_norm": CategoricalDistribution(space.batch_norm),
        "dropout": FloatDistribution(*space.dropout),
        "input_dropout": FloatDistribution(*space.input_dropout),
        "max_norm": CategoricalDistribution(space.max_norm),
        "learning_rate": FloatDistribution(*space.learning_rate, log=True),
        "batch_size": CategoricalDistribution(space.batch_size),
        "epochs": IntDistribution(*space.epochs),
        "initializer": CategoricalDistribution(space.initializer),
    }
    params = {name: distribution.to_external_repr(_draw(distribution, rng)) for name, distribution in distributions.items()}
    params["depth"] = 3
    values = {epoch: 0.95 + 0.003 * epoch + rng.normal(0, 0.005) for epoch in range(1, 6)}
    return create_trial(params=params, distributions=distributions, value=values[5], intermediate_values=values, state=TrialState.COMPLETE)


def _draw(distribution, rng: np.random.Generator) -> float:
    """A value of `distribution` in Optuna's internal representation."""
    if isinstance(distribution, CategoricalDistribution):
        return float(rng.integers(len(distribution.choices)))
    if isinstance(distribution, IntDistribution):
        return float(rng.integers(distribution.low, distribution.high + 1))
    if distribution.log:
        return float(np.exp(rng.uniform(np.log(distribution.low), np.log(distribution.high))))
    return float(rng.uniform(distribution.low, distribution.high))


def measure(trials: int, space: SearchSpace, directory: Path) -> tuple[float, float]:
    """Median seconds of (ask + suggest, report + should_prune) with `trials` finished trials."""
    storage = f"sqlite:///{directory / f'study-{trials}.db'}"
    study = optuna.create_study(
        storage=storage, direction="maximize", sampler=optuna.samplers.TPESampler(seed=0), pruner=optuna.pruners.MedianPruner(3, 2)
    )
    rng = np.random.default_rng(0)
    study.add_trials([finished_trial(space, rng) for _ in range(trials)])
    asks, prunes = [], []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        trial = study.ask()
        suggest_design(trial, space)
        asks.append(time.perf_counter() - started)
        started = time.perf_counter()
        trial.report(0.96, 3)
        trial.should_prune()
        prunes.append(time.perf_counter() - started)
        study.tell(trial, state=TrialState.PRUNED)
    return float(np.median(asks)), float(np.median(prunes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default="100,1000", help="finished trials in the study, comma-separated")
    arguments = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_params().search.space
    with tempfile.TemporaryDirectory() as directory:
        for trials in map(int, arguments.trials.split(",")):
            ask, prune = measure(trials, space, Path(directory))
            print(f"{trials:>6} finished trials (SQLite): ask + suggest {ask:.3f} s, report + should_prune {prune:.4f} s (median of {ROUNDS})")


if __name__ == "__main__":
    main()
