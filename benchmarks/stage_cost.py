"""The fixed cost of a train stage: what it spends besides its epochs, at two revisions side by side.

    python -m benchmarks.stage_cost                  # before: 6b77aaa (before replicates trained together)
    python -m benchmarks.stage_cost --before REV --rounds 3

Needs data/processed (`dvc repro preprocess`) and a clean commit to compare. For each revision
it unpacks `git archive REV` into a temporary directory, copies data/processed in, and runs the
real stage, `python -m pipeline.train mlp-512-256-128`, with its own sqlite MLflow store (created
by one untimed run first, as in a pipeline where an earlier stage created it). Every run is
timed from outside, whole process; the revisions take turns.

A stage's wall time is fixed + epochs x per-epoch, so two epoch counts give both:
per-epoch = (wall(E2) - wall(E1)) / (E2 - E1), fixed = wall(E1) - E1 x per-epoch. The fixed cost
holds imports, the store, loading data, building, XLA compiling, exporting, figures and model
logging. Then the floor no train stage can go below: a process that only imports TensorFlow and
Keras. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
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


def stage_wall_time(workspace: Path, seeds: list[int], epochs: int) -> float:
    params_file = workspace / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train"].update(seeds=seeds, max_epochs=epochs)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline.train", VARIANT], cwd=workspace, env=env, check=True, capture_output=True
    )
    return time.perf_counter() - started


def import_wall_time() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow, keras"], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help="the earlier revision")
    parser.add_argument("--after", default="HEAD", help="the later revision")
    parser.add_argument("--epochs", type=int, nargs=2, default=(1, 4), metavar=("E1", "E2"))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    revisions = [args.before, args.after]
    labels = {
        revision: subprocess.run(
            ["git", "log", "-1", "--format=%h %s", revision], cwd=REPOSITORY, capture_output=True, text=True, check=True
        ).stdout.strip()
        for revision in revisions
    }

    peak = sgemm_peak()
    walls: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="stage-cost-") as root:
        workspaces = {revision: unpack(revision, Path(root)) for revision in revisions}
        for workspace in workspaces.values():
            stage_wall_time(workspace, [0], 1)  # creates the store, untimed
        imports = []
        for _ in range(args.rounds):
            imports.append(import_wall_time())
            for seeds_name, seeds in SEED_SETS.items():
                for epochs in args.epochs:
                    for revision in revisions:
                        walls.setdefault((revision, seeds_name, epochs), []).append(
                            stage_wall_time(workspaces[revision], seeds, epochs)
                        )
    peak = max(peak, sgemm_peak())

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    print(f"float32 matrix-multiply peak (TensorFlow): {peak / 1e9:.0f} GFLOP/s")
    print(f"`python -m pipeline.train {VARIANT}`, whole process; {args.rounds} rounds, taking turns; medians\n")
    for revision in revisions:
        print(f"  {revision:<8} {labels[revision]}")
    e1, e2 = args.epochs
    print(f"\n{'seeds':<11} {'revision':<8} {f'wall {e1} ep':>10} {f'wall {e2} ep':>10} {'per epoch':>10} {'fixed':>7}")
    fixed_costs = {}
    for seeds_name in SEED_SETS:
        for revision in revisions:
            short, long = (statistics.median(walls[revision, seeds_name, e]) for e in args.epochs)
            per_epoch = (long - short) / (e2 - e1)
            fixed_costs[revision, seeds_name] = fixed = short - e1 * per_epoch
            print(f"{seeds_name:<11} {revision:<8} {short:>9.1f}s {long:>9.1f}s {per_epoch:>9.2f}s {fixed:>6.1f}s")
        before, after = (fixed_costs[revision, seeds_name] for revision in revisions)
        print(f"{seeds_name:<11} fixed cost after / before: {after / before:.2f}")
    print(f"\nfloor: a process that imports TensorFlow and Keras and exits, {statistics.median(imports):.1f} s")


if __name__ == "__main__":
    main()
