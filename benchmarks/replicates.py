"""Replicates: one after another against together, Dropout under XLA, the whole pipeline at one seed and five.

    python -m benchmarks.replicates                       # about 30 minutes on a 2-core VM
    python -m benchmarks.replicates --epochs 3 --pipeline-epochs 2

Needs `dvc repro preprocess` first (it reads data/processed). Every configuration runs in a
process of its own, timed from outside (imports, data, building, compiling, training and
exporting every replicate: what a train stage does besides MLflow), and they take turns so
that this machine's drift hits all alike. Seconds per epoch are per replicate (a together
epoch divided by its copies): the fastest epoch 2..N, then the median. Validation accuracy is
every replicate's after the last epoch: equal distributions are expected, not equal numbers.
"fixed s" is the process's wall time less its epochs at the median pace: imports, data, building,
XLA compiling (the first epoch's excess), exporting.

Then the whole pipeline, `dvc repro` in a fresh copy of the repository (data copied in, so
download and preprocess are up to date), every variant capped at the same epochs, once with
`train.seeds: [0]` and once with five seeds. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.training import cpu_model, dense_flops, epoch_clock, sgemm_peak

REPOSITORY = Path(__file__).resolve().parent.parent
VARIANTS = ("mlp-512-256-128", "mlp-512-256-128-bn-dropout")
FIVE = [0, 1, 2, 3, 4]
# name -> (replicates, how they train)
CONFIGURATIONS = {
    "notebook": (1, "the first notebook's way: float64 X/255, plain fit, no XLA, batch-128 validation"),
    "alone": (1, "the train stage, one seed"),
    "one-by-one": (5, "the train stage, five seeds one after another (speed.replicates_together: false)"),
    "together": (5, "the train stage, five seeds in one program (the default)"),
}
DROPOUT_FORMS = {
    "keras-dropout-no-xla": "Keras' Dropout, XLA off (what the Dropout variants did before)",
    "keras-dropout-xla": "Keras' Dropout under XLA (TensorFlow's auto_select random algorithm)",
    "threefry-dropout-xla": "ThreefryDropout under XLA (the train stage now)",
}


def train_in_this_process(configuration: str, variant: str, epochs: int) -> dict:
    import keras
    import tensorflow as tf

    from pipeline import model as model_module
    from pipeline import training
    from pipeline.config import load_params
    from pipeline.data import load_split
    from pipeline.paths import split_path

    base = load_params()
    params = base.model_copy(update={"train": base.train.model_copy(update={"max_epochs": epochs})})
    train, validation = load_split(split_path("train")), load_split(split_path("validation"))
    epoch_seconds: list[float] = []

    if configuration in DROPOUT_FORMS:
        spec = params.variants[variant]
        if configuration == "keras-dropout-no-xla":
            spec = spec.model_copy(update={"jit_compile": False})
        if configuration == "keras-dropout-xla":
            model_module.ThreefryDropout = keras.layers.Dropout  # the layer build_network swaps in
        params = params.model_copy(update={"variants": {**params.variants, variant: spec}})
        groups = [[0]]
    else:
        groups = [FIVE] if configuration == "together" else [[seed] for seed in FIVE[: CONFIGURATIONS[configuration][0]]]
    accuracies = []
    for group in groups:
        trained = training.train_group(params, variant, group, tf.distribute.get_strategy(), train, validation, [epoch_clock(epoch_seconds)], 0)
        accuracies += [history["val_accuracy"][-1] for _, history in trained.values()]
        epoch_seconds[len(epoch_seconds) - epochs :] = [s / len(group) for s in epoch_seconds[-epochs:]]
    steady = [s for i, s in enumerate(epoch_seconds) if i % epochs] or epoch_seconds
    return {"steady": steady, "val_accuracy": accuracies, "images": (len(train[0]), len(validation[0]))}


def notebook_in_this_process(variant: str, epochs: int) -> dict:
    from benchmarks.training import run_configuration

    result = run_configuration("notebook", variant, epochs, seed=0)
    return {"steady": result["steady_epochs"], "val_accuracy": [result["val_accuracy"]]}


def child(configuration: str, variant: str, epochs: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.replicates", "--only", configuration, "--variant", variant, "--epochs", str(epochs)]
    started = time.perf_counter()
    output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPOSITORY).stdout
    return {**json.loads(output.strip().splitlines()[-1]), "wall": time.perf_counter() - started}


def pipeline_wall_time(seeds: list[int], epochs: int) -> float:
    """`dvc repro` of every train stage and evaluate in a fresh copy, data already prepared."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPOSITORY, capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="pipeline-benchmark-") as root:
        copy = Path(root)
        for name in filter(None, listed.split("\0")):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPOSITORY / name, copy / name)
        shutil.copytree(REPOSITORY / "data", copy / "data", dirs_exist_ok=True)  # data/.gitignore is already there
        params = yaml.safe_load((copy / "params.yaml").read_text())
        params["train"].update(seeds=seeds, max_epochs=epochs)
        (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
        env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        started = time.perf_counter()
        subprocess.run(["dvc", "repro", "--quiet"], cwd=copy, env=env, check=True, capture_output=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per configuration")
    parser.add_argument("--rounds", type=int, default=2, help="turns per configuration")
    parser.add_argument("--pipeline-epochs", type=int, default=3, help="every variant's epochs in the pipeline runs")
    parser.add_argument("--parts", nargs="+", choices=["stages", "pipeline"], default=["stages", "pipeline"])
    parser.add_argument("--only", choices=[*CONFIGURATIONS, *DROPOUT_FORMS], help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=VARIANTS[0], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        if args.only == "notebook":
            print(json.dumps(notebook_in_this_process(args.variant, args.epochs)))
        else:
            print(json.dumps(train_in_this_process(args.only, args.variant, args.epochs)))
        return

    peak = sgemm_peak()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    print(f"float32 matrix-multiply peak (TensorFlow): {peak / 1e9:.0f} GFLOP/s before", flush=True)
    if "stages" in args.parts:
        stages(args.epochs, args.rounds, peak)
    if "pipeline" in args.parts:
        one, five = (pipeline_wall_time(seeds, args.pipeline_epochs) for seeds in ([0], FIVE))
        print(
            f"\nwhole pipeline (dvc repro, 10 train stages + evaluate, {args.pipeline_epochs} epochs per variant): "
            f"one seed {one:.0f} s, five seeds {five:.0f} s, ratio {five / one:.2f}x"
        )


def stages(epochs: int, rounds: int, peak: float) -> None:
    runs = {(variant, name): [] for variant in VARIANTS for name in CONFIGURATIONS}
    dropout = {name: [] for name in DROPOUT_FORMS}
    sibling = []
    for _ in range(rounds):
        for variant, name in runs:
            runs[variant, name].append(child(name, variant, epochs))
        for name in DROPOUT_FORMS:
            dropout[name].append(child(name, "mlp-512-256-128-bn-dropout", epochs))
        sibling.append(child("alone", "mlp-512-256-128-bn", epochs))
    after = sgemm_peak()
    print(f"float32 matrix-multiply peak (TensorFlow): {after / 1e9:.0f} GFLOP/s after; 'of peak' uses the higher")
    peak = max(peak, after)
    print(f"{epochs} epochs per configuration, {rounds} rounds, taking turns; s/epoch per replicate\n")
    print(
        f"{'variant':<28} {'configuration':<12} {'K':>2} {'fastest':>8} {'median':>7} {'vs notebook':>13} "
        f"{'of peak':>8} {'wall s':>7} {'fixed s':>7}  val accuracy per replicate, round after round"
    )
    for (variant, name), results in runs.items():
        replicates = CONFIGURATIONS[name][0]
        fastest = min(s for run in results for s in run["steady"])
        median = statistics.median(s for run in results for s in run["steady"])
        notebook = [s for run in runs[variant, "notebook"] for s in run["steady"]]
        images = results[0].get("images") or runs[variant, "alone"][0]["images"]
        rate = dense_flops([512, 256, 128], *images) / fastest
        accuracies = " ".join(f"{a:.4f}" for run in results for a in run["val_accuracy"])
        wall = min(run["wall"] for run in results)
        fixed = wall - epochs * replicates * median  # what the process spends besides its epochs
        speedup = f"{min(notebook) / fastest:.2f}/{statistics.median(notebook) / median:.2f}x"
        print(
            f"{variant:<28} {name:<12} {replicates:>2} {fastest:>8.3f} {median:>7.3f} {speedup:>13} "
            f"{rate / peak:>8.0%} {wall:>7.1f} {fixed:>7.1f}  {accuracies}"
        )
    print("\n  vs notebook: the notebook's fastest epoch over this one's / the same for the medians")
    for name, (_, what) in CONFIGURATIONS.items():
        print(f"  {name:<12} {what}")

    print("\nDropout under XLA, mlp-512-256-128-bn-dropout alone, against its sibling mlp-512-256-128-bn:")
    base = [s for run in sibling for s in run["steady"]]
    print(f"  {'mlp-512-256-128-bn (no Dropout)':<60} {min(base):>7.3f} s/epoch fastest, {statistics.median(base):.3f} median")
    for name, results in dropout.items():
        steady = [s for run in results for s in run["steady"]]
        print(
            f"  {DROPOUT_FORMS[name]:<60} {min(steady):>7.3f} s/epoch fastest, {statistics.median(steady):.3f} median: "
            f"{min(steady) / min(base) - 1:+.0%} / {statistics.median(steady) / statistics.median(base) - 1:+.0%} vs sibling"
        )
    sys.stdout.flush()

if __name__ == "__main__":
    main()
