"""Training speed: the first notebook's way against the project's, lever by lever, same machine.

    python -m benchmarks.training                 # 512-256-128 plain, 5 epochs, 3 rounds
    python -m benchmarks.training --epochs 8 --rounds 2 --variant mlp-256-64

Needs `dvc repro preprocess` first (it reads data/processed). Each configuration trains in a
process of its own (clean TensorFlow state, its own peak memory) on the same 49,500 / 10,500
split. The configurations take turns, round after round, and round r uses seed r: this
machine's speed drifts by tens of percent from one minute to the next, so taking turns gives
every configuration the same chances, and the seeds give accuracy a spread to be judged
against. Seconds per epoch are the fastest epoch 2..N of any round, the median beside it
(epoch 1 also traces or compiles, reported apart): other tenants add time, never take it away.
FLOPs are counted, not estimated: per training image 2*in*out per Dense layer forward, the same
for the weight gradients, and the same again for the input gradients of every layer but the
first; per validation image the forward pass. The peak is the best float32 matrix multiply
(TensorFlow, 2048 and 4096 squared) measured in the same run, before and after. The ceiling is
the same training steps with Keras' fit taken away: 64 of them unrolled in one XLA program,
no metrics, no validation, no input pipeline. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# name -> what changes, cumulatively, from the notebook's way to the project's.
CONFIGURATIONS = {
    "notebook": "float64 X/255, plain model.fit, validation every epoch (at the training batch, 128)",
    "float32": "+ float32 arrays (the preprocess stage's)",
    "steps_per_execution": "+ 64 steps per TensorFlow call",
    "validation_batch": "+ validation in large batches (speed.validation_batch_size)",
    "jit_compile": "+ XLA (the variant's jit_compile)",
    "project": "the train stage's own fit(), with its MLflow epoch logging (= params.yaml)",
}


def dense_flops(hidden_layers: list[int], train_images: int, validation_images: int) -> float:
    sizes = [784, *hidden_layers, 10]
    products = [a * b for a, b in zip(sizes, sizes[1:])]
    forward = 2 * sum(products)
    train = forward + 2 * sum(products) + 2 * sum(products[1:])  # + weight grads + input grads
    return train * train_images + forward * validation_images


def cpu_model() -> str:
    """The machine every absolute figure belongs to."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def sgemm_peak() -> float:
    """The best float32 matrix multiply TensorFlow does here: what "of peak" divides by."""
    import tensorflow as tf

    best = 0.0
    for n in (2048, 4096):
        a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
        matmul = tf.function(lambda a, b: tf.matmul(a, b))
        matmul(a, b).numpy()
        reps = max(3, int(3e10 / (2 * n**3)))
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(reps):
                c = matmul(a, b)
            c.numpy()
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - started))
    return best


def epoch_clock(seconds: list[float]):
    """A Keras callback that appends each epoch's wall time to `seconds` (Keras imported in the child only)."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    return EpochClock()


def run_configuration(name: str, variant: str, epochs: int, seed: int) -> dict:
    """Train in this process; return seconds per epoch, accuracy and peak memory."""
    import keras

    from pipeline import tracking
    from pipeline.config import load_params
    from pipeline.data import load_split
    from pipeline.model import build_model
    from pipeline.paths import split_path
    from pipeline.training import split_logs, train_group

    base = load_params()
    spec = base.variants[variant]
    params = base.model_copy(update={"train": base.train.model_copy(update={"max_epochs": epochs, "seeds": [seed]})})
    (x, y), validation = load_split(split_path("train")), load_split(split_path("validation"))
    step = list(CONFIGURATIONS).index(name)
    if step == 0:
        x = np.rint(x * 255) / 255  # the notebook's float64 arrays: the same images, X / 255
        validation = (np.rint(validation[0] * 255) / 255, validation[1])

    epoch_seconds: list[float] = []
    logging_seconds: list[float] = []

    class TimedEpochMetrics(tracking.EpochMetrics):
        def on_epoch_end(self, epoch, logs=None):
            started = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            logging_seconds.append(time.perf_counter() - started)

    keras.utils.set_random_seed(seed)
    if name == "project":
        import tensorflow as tf

        with tempfile.TemporaryDirectory() as store:
            import mlflow

            mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
            tags = {"benchmark": "training"}
            with tracking.run(f"benchmark-{variant}", tags), tracking.run_per_seed(variant, [seed], tags, {}) as run_ids:
                logging = TimedEpochMetrics(run_ids, lambda logs: split_logs(logs, [seed]))
                callbacks = [logging, epoch_clock(epoch_seconds)]
                trained = train_group(params, variant, [seed], tf.distribute.get_strategy(), (x, y), validation, callbacks, 0)
                history = trained[seed][1]
    else:
        xla = spec.jit_compile if step >= 4 else False  # what Keras' default "auto" means on a CPU-only machine
        model = build_model(spec.model_copy(update={"jit_compile": xla}), seed, params.speed.steps_per_execution if step >= 2 else 1)
        history = model.fit(
            x,
            y,
            batch_size=spec.batch_size,
            epochs=epochs,
            validation_data=validation,
            validation_batch_size=params.speed.validation_batch_size if step >= 3 else None,
            callbacks=[epoch_clock(epoch_seconds)],
            verbose=0,
        ).history
    return {
        "steady_epochs": epoch_seconds[1:] or epoch_seconds,
        "first_epoch": epoch_seconds[0],
        "val_accuracy": history["val_accuracy"][-1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "logging_ms": [1000 * seconds for seconds in logging_seconds],
        "train_images": len(x),
        "validation_images": len(validation[0]),
        "hidden_layers": spec.hidden_layers,
    }


def fused_ceiling(variant: str, calls: int = 12) -> dict:
    """The variant's training steps as one XLA program of 64 steps, nothing else: the best
    this network at this batch size gets from this machine, Keras or not."""
    import keras
    import tensorflow as tf

    from pipeline.config import load_params
    from pipeline.data import load_split
    from pipeline.model import build_model
    from pipeline.paths import split_path

    spec = load_params().variants[variant]
    model = build_model(spec, seed=0)
    optimizer = keras.optimizers.Adam(spec.learning_rate)
    optimizer.build(model.trainable_variables)
    loss = keras.losses.CategoricalCrossentropy()
    steps, batch = 64, spec.batch_size
    x, y = load_split(split_path("train"))
    xs = tf.constant(x[: steps * batch].reshape(steps, batch, -1))
    ys = tf.constant(y[: steps * batch].reshape(steps, batch, -1))

    @tf.function(jit_compile=True)
    def train_steps(xs, ys):
        for k in range(steps):  # unrolled: one program, no launch or loop between steps
            with tf.GradientTape() as tape:
                value = loss(ys[k], model(xs[k], training=True))
            optimizer.apply(tape.gradient(value, model.trainable_variables), model.trainable_variables)
        return value

    train_steps(xs, ys).numpy()  # compile
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        train_steps(xs, ys).numpy()
        seconds.append(time.perf_counter() - started)
    return {"images_per_second": steps * batch / min(seconds), "hidden_layers": spec.hidden_layers}


def child(only: str, variant: str, epochs: int, seed: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.training", "--only", only, "--variant", variant]
    command += ["--epochs", str(epochs), "--seed", str(seed)]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="mlp-512-256-128")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="turns per configuration; round r uses seed r")
    parser.add_argument("--only", choices=[*CONFIGURATIONS, "ceiling"], help=argparse.SUPPRESS)  # one child process
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only == "ceiling":
        print(json.dumps(fused_ceiling(args.variant)))
        return
    if args.only:
        print(json.dumps(run_configuration(args.only, args.variant, args.epochs, args.seed)))
        return

    peak = sgemm_peak()
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGURATIONS}
    ceilings = []
    for seed in range(args.rounds):
        for name in CONFIGURATIONS:
            runs[name].append(child(name, args.variant, args.epochs, seed))
        ceilings.append(child("ceiling", args.variant, args.epochs, seed))
    peak = max(peak, sgemm_peak())

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    print(f"float32 matrix-multiply peak (TensorFlow): {peak / 1e9:.0f} GFLOP/s")
    print(f"{args.variant}, {args.epochs} epochs per configuration, {args.rounds} rounds (seeds 0-{args.rounds - 1})\n")
    print(
        f"{'configuration':<20} {'s/epoch':>8} {'median':>7} {'speed-up':>8} {'GFLOP/s':>8} {'of peak':>8} "
        f"{'epoch 1':>8} {'peak RSS':>9}  val acc by seed"
    )
    fastest = {name: min(s for run in results for s in run["steady_epochs"]) for name, results in runs.items()}
    median = {name: statistics.median(s for run in results for s in run["steady_epochs"]) for name, results in runs.items()}
    accuracy = {name: [run["val_accuracy"] for run in results] for name, results in runs.items()}
    shape = runs["project"][0]
    epoch_flops = dense_flops(shape["hidden_layers"], shape["train_images"], shape["validation_images"])
    for name, results in runs.items():
        rate = epoch_flops / fastest[name]
        print(
            f"{name:<20} {fastest[name]:>8.3f} {median[name]:>7.3f} {fastest['notebook'] / fastest[name]:>7.2f}x "
            f"{rate / 1e9:>8.0f} {rate / peak:>8.0%} {min(run['first_epoch'] for run in results):>7.2f}s "
            f"{max(run['peak_rss_mb'] for run in results):>7.0f}MB  {' '.join(f'{a:.4f}' for a in accuracy[name])}"
        )
    print()
    for name, what in CONFIGURATIONS.items():
        print(f"  {name:<20} {what}")

    ceiling = max(c["images_per_second"] for c in ceilings) * dense_flops(shape["hidden_layers"], 1, 0)
    print(f"\nceiling, 64 training steps in one XLA program without Keras: {ceiling / 1e9:.0f} GFLOP/s = {ceiling / peak:.0%} of peak")
    logging = statistics.median(ms for run in runs["project"] for ms in run["logging_ms"])
    print(f"MLflow logging per epoch (project): {logging:.1f} ms = {logging / 1000 / fastest['project']:.1%} of an epoch")
    notebook, project = statistics.mean(accuracy["notebook"]), statistics.mean(accuracy["project"])
    print(
        f"project vs notebook: {fastest['notebook'] / fastest['project']:.2f}x per epoch "
        f"({median['notebook'] / median['project']:.2f}x by medians); validation accuracy, mean of {args.rounds} seeds, "
        f"{notebook:.4f} vs {project:.4f}: {100 * (project - notebook):+.2f} points "
        f"(the notebook's own seeds span {100 * (max(accuracy['notebook']) - min(accuracy['notebook'])):.2f})"
    )


if __name__ == "__main__":
    main()
