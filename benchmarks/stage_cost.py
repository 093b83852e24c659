"""The fixed cost of a train stage: what it spends besides its epochs, at two revisions side by side.

    python -m benchmarks.stage_cost                  # before: 6b77aaa (before replicates trained together)
    python -m benchmarks.stage_cost --before REV --rounds 3

Needs data/processed (`dvc repro preprocess`) and a clean commit to compare. For each revision
it unpacks `git archive REV` into a temporary directory, copies data/processed in, and runs the
real stage, `python -m pipeline.train mlp-512-256-128`, with its own sqlite MLflow store (created
by one untimed run first, as in a pipeline where an earlier stage created it). Every run is
timed from outside, whole process; the revisions take turns.

The stage's epochs are timed by the stage itself: each replicate's child run holds its per-epoch
metrics, each stamped when its epoch ended (both revisions log them so). An epoch's time is the
gap between two such stamps of one run (epochs 2 on: the first holds XLA's compiling); the
stage's epochs cost their count times the median epoch, and the fixed cost is the rest of the
wall time: imports, the store, loading data, building, compiling, exporting, figures, model
logging. Then the floor no train stage can go below: a process that only imports TensorFlow and
Keras. Prints figures; asserts nothing.

    python -m benchmarks.stage_cost --phases train mlp-512-256-128
    python -m benchmarks.stage_cost --phases evaluate

runs that stage of this checkout in this process, as params.yaml says, and prints where its time
goes, part by part (the store and data must be where the stage expects them).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.training import cpu_model, sgemm_peak

REPOSITORY = Path(__file__).resolve().parent.parent
VARIANT = "mlp-512-256-128"
BEFORE = "6b77aaa"  # main before issue 13: seeds one after another, validation batch 2048
SEED_SETS = {"one seed": [0], "five seeds": [0, 1, 2, 3, 4]}


def unpack(revision: str, root: Path) -> Path:
    archive = subprocess.run(["git", "archive", revision], cwd=REPOSITORY, capture_output=True, check=True).stdout
    workspace = root / revision
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(workspace, filter="data")
    shutil.copytree(REPOSITORY / "data" / "processed", workspace / "data" / "processed")
    subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)  # the stage records a commit
    return workspace


def stage_wall_time(workspace: Path, seeds: list[int], epochs: int) -> tuple[float, list[int]]:
    """The stage's wall time, and when each epoch of its replicates ended (ms, from its store)."""
    params_file = workspace / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train"].update(seeds=seeds, max_epochs=epochs)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    started, since = time.perf_counter(), int(time.time() * 1000)
    subprocess.run(
        [sys.executable, "-m", "pipeline.train", VARIANT], cwd=workspace, env=env, check=True, capture_output=True
    )
    wall = time.perf_counter() - started
    with contextlib.closing(sqlite3.connect(workspace / "mlflow.db")) as store:
        rows = store.execute(
            "SELECT m.run_uuid, m.step, m.timestamp FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            "JOIN tags t ON t.run_uuid = m.run_uuid AND t.key = 'mlflow.parentRunId' "
            "WHERE m.key = 'val_accuracy' AND r.start_time >= ? ORDER BY m.run_uuid, m.step",
            (since,),
        ).fetchall()
    ends: dict[str, list[int]] = {}
    for run, _, stamp in rows:
        ends.setdefault(run, []).append(stamp)
    return wall, list(ends.values())


def split_wall_time(wall: float, epoch_ends: list[list[int]]) -> tuple[float, float, int]:
    """(fixed cost, median epoch, epochs run) of one stage run. Replicates trained together end
    their epochs at the same instant: an epoch is counted once however many runs stamp it."""
    gaps = {(earlier, later) for ends in epoch_ends for earlier, later in zip(ends, ends[1:])}
    epoch = statistics.median(later - earlier for earlier, later in gaps) / 1000
    epochs = len({stamp for ends in epoch_ends for stamp in ends})
    return wall - epochs * epoch, epoch, epochs


def import_wall_time() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow, keras"], check=True, capture_output=True)
    return time.perf_counter() - started


# What each stage spends its time on, by the functions that do it.
PHASES = {
    "train": {
        "pipeline.train": ["load_split", "write_replicate", "write_variant"],
        "pipeline.store": ["check_store"],
        "pipeline.tracking": ["log_datasets", "record_replicate", "record_variant"],
        "pipeline.training": ["build_replicates", "replicate_batches", "replicate_validation", "export_replicate"],
        "mlflow": ["set_experiment"],
    },
    "evaluate": {
        "pipeline.evaluate": ["load_split", "trained", "score_variant", "write_comparison", "write_differences"],
        "pipeline.registry": ["ensure_registered", "set_champion"],
        "pipeline.tracking": ["record_evaluation", "record_results", "log_classifier_evaluation"],
        "pipeline.store": ["check_store"],
        "mlflow": ["set_experiment"],
    },
}


def phases(stage: str, arguments: list[str]) -> None:
    """Run one stage in this process with a clock around each of its parts; print the parts in order."""

    started = time.perf_counter()
    parts: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def clock(name: str):
        begun = time.perf_counter()
        yield
        parts.append((name, time.perf_counter() - begun))

    with clock("import TensorFlow and Keras"):
        import keras  # noqa: F401
    with clock("import MLflow"):
        import mlflow  # noqa: F401
    with clock(f"import pipeline.{stage} (the rest)"):
        module = importlib.import_module(f"pipeline.{stage}")

    def timed(owner, name: str):
        function = getattr(owner, name)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with clock(f"{owner.__name__.removeprefix('pipeline.')}.{name}"):
                return function(*args, **kwargs)

        return wrapper

    for owner_name, names in PHASES[stage].items():
        owner = importlib.import_module(owner_name)
        for name in names:
            setattr(owner, name, timed(owner, name))

    if stage == "train":  # epochs timed from inside fit: the first one holds XLA's compiling
        training = importlib.import_module("pipeline.training")
        train_group = training.train_group

        class EpochClock(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.last = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                now = time.perf_counter()
                parts.append((f"epoch {epoch + 1} (training and validation)", now - self.last))
                self.last = now

        def with_clock(*args, **kwargs):
            args = list(args)
            args[6] = [*args[6], EpochClock()]
            with clock("training.train_group (building, fit, exporting)"):
                return train_group(*args, **kwargs)

        training.train_group = with_clock
    with clock(f"{stage}.main"):
        if stage == "train":
            module.main(arguments)
        else:
            module.main()
    total = time.perf_counter() - started
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; `python -m pipeline.{stage} {' '.join(arguments)}`")
    print("a part inside another is listed before it, and counted in it\n")
    for name, seconds in parts:
        print(f"  {seconds:7.2f} s  {name}")
    print(f"  {total:7.2f} s  in all, from the first import (the interpreter's start and exit not included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help="the earlier revision")
    parser.add_argument("--after", default="HEAD", help="the later revision")
    parser.add_argument("--epochs", type=int, default=4, help="at least 2: epochs 2 on are the steady ones")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phases", nargs="+", metavar=("STAGE", "ARGUMENT"), help="train VARIANT, or evaluate")
    args = parser.parse_args()
    if args.phases:
        stage, *arguments = args.phases
        if stage not in PHASES:
            parser.error(f"--phases: the stage is one of {', '.join(PHASES)}, not {stage!r}")
        phases(stage, arguments)
        return
    revisions = [args.before, args.after]
    labels = {
        revision: subprocess.run(
            ["git", "log", "-1", "--format=%h %s", revision], cwd=REPOSITORY, capture_output=True, text=True, check=True
        ).stdout.strip()
        for revision in revisions
    }

    peak = sgemm_peak()
    runs: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="stage-cost-") as root:
        workspaces = {revision: unpack(revision, Path(root)) for revision in revisions}
        for workspace in workspaces.values():
            stage_wall_time(workspace, [0], 1)  # creates the store, untimed
        imports = []
        for _ in range(args.rounds):
            imports.append(import_wall_time())
            for seeds_name, seeds in SEED_SETS.items():
                for revision in revisions:
                    wall, epoch_ends = stage_wall_time(workspaces[revision], seeds, args.epochs)
                    runs.setdefault((revision, seeds_name), []).append((wall, *split_wall_time(wall, epoch_ends)))
    peak = max(peak, sgemm_peak())

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    print(f"float32 matrix-multiply peak (TensorFlow): {peak / 1e9:.0f} GFLOP/s")
    print(
        f"`python -m pipeline.train {VARIANT}`, {args.epochs} epochs, whole process; {args.rounds} rounds, "
        "taking turns; medians over the rounds\n"
    )
    for revision in revisions:
        print(f"  {revision:<8} {labels[revision]}")
    print(f"\n{'seeds':<11} {'revision':<8} {'wall':>7} {'epochs':>6} {'epoch':>7} {'fixed':>7}")
    fixed_costs = {}
    for seeds_name in SEED_SETS:
        for revision in revisions:
            results = runs[revision, seeds_name]
            wall, fixed, epoch = (statistics.median(result[i] for result in results) for i in (0, 1, 2))
            fixed_costs[revision, seeds_name] = fixed
            print(f"{seeds_name:<11} {revision:<8} {wall:>6.1f}s {results[0][3]:>6} {epoch:>6.2f}s {fixed:>6.1f}s")
        before, after = (fixed_costs[revision, seeds_name] for revision in revisions)
        print(f"{seeds_name:<11} fixed cost after / before: {after / before:.2f}")
    print(f"\nfloor: a process that imports TensorFlow and Keras and exits, {statistics.median(imports):.1f} s")


if __name__ == "__main__":
    main()
