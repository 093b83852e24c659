"""Training speed: the first notebook's way against the project's, lever by lever, same machine.

    python -m benchmarks.training                 # 512-256-128 plain, 5 epochs per configuration
    python -m benchmarks.training --epochs 8 --variant mlp-256-64

Needs `dvc repro preprocess` first (it reads data/processed). Each configuration trains in a
process of its own (clean TensorFlow state, its own peak memory), from the same initial
weights, on the same 49,500 / 10,500 split. Seconds per epoch are the fastest of epochs 2..N,
the median beside it (epoch 1 also traces or compiles, reported apart): on a shared machine
other tenants add time, never take it away. FLOPs are counted, not estimated: per
training image 2*in*out per Dense layer forward, the same for the weight gradients, and the
same again for the input gradients of every layer but the first; per validation image the
forward pass. The peak is the best float32 matrix multiply (TensorFlow, 2048 and 4096 squared)
measured in the same run. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# name -> what changes, cumulatively, from the notebook's way to the project's.
CONFIGURATIONS = {
    "notebook": "float64 X/255, plain model.fit, validation every epoch (at the training batch, 128)",
    "float32": "+ float32 arrays (the preprocess stage's)",
    "steps_per_execution": "+ 64 steps per TensorFlow call",
    "validation_batch": "+ validation at batch 2048",
    "jit_compile": "+ XLA (the variant's jit_compile)",
    "project": "the train stage's own fit(), with its MLflow epoch logging (= params.yaml)",
}


def dense_flops(hidden_layers: list[int], train_images: int, validation_images: int) -> float:
    sizes = [784, *hidden_layers, 10]
    products = [a * b for a, b in zip(sizes, sizes[1:])]
    forward = 2 * sum(products)
    train = forward + 2 * sum(products) + 2 * sum(products[1:])  # + weight grads + input grads
    return train * train_images + forward * validation_images


def sgemm_peak() -> float:
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


def run_configuration(name: str, variant: str, epochs: int) -> dict:
    """Train in this process; return seconds per epoch, accuracy and peak memory."""
    import keras

    from pipeline import tracking
    from pipeline.config import load_params
    from pipeline.model import build_model
    from pipeline.preprocess import load_split
    from pipeline.train import fit

    base = load_params()
    params = base.model_copy(update={"train": base.train.model_copy(update={"max_epochs": epochs})})
    spec = params.variants[variant]
    (x, y), validation = load_split("train"), load_split("validation")
    order = list(CONFIGURATIONS)
    step = order.index(name)
    if step == 0:
        x = np.rint(x * 255) / 255  # the notebook's float64 arrays: the same images, X / 255
        validation = (np.rint(validation[0] * 255) / 255, validation[1])

    epoch_seconds: list[float] = []
    logging_seconds: list[float] = []

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.started)

    class TimedEpochMetrics(tracking.EpochMetrics):
        def on_epoch_end(self, epoch, logs=None):
            started = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            logging_seconds.append(time.perf_counter() - started)

    keras.utils.set_random_seed(spec.seed)
    if name == "project":
        model = build_model(spec, params.train.steps_per_execution)
        with tempfile.TemporaryDirectory() as store:
            import mlflow

            mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
            with tracking.run(f"benchmark-{variant}", {"benchmark": "training"}):
                history = fit(model, params, variant, (x, y), validation, [TimedEpochMetrics(), EpochClock()], 0)
    else:
        xla = spec.jit_compile if step >= 4 else False  # what Keras' default "auto" means on a CPU-only machine
        model = build_model(spec.model_copy(update={"jit_compile": xla}), params.train.steps_per_execution if step >= 2 else 1)
        history = model.fit(
            x, y, batch_size=spec.batch_size, epochs=epochs, validation_data=validation,
            validation_batch_size=params.train.validation_batch_size if step >= 3 else None,
            callbacks=[EpochClock()], verbose=0,
        )  # fmt: skip
    steady = epoch_seconds[1:] or epoch_seconds
    return {
        "seconds_per_epoch": min(steady),  # this machine's neighbours make slow epochs, never fast ones
        "median_epoch": statistics.median(steady),
        "first_epoch": epoch_seconds[0],
        "val_accuracy": history.history["val_accuracy"][-1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "logging_ms": 1000 * statistics.median(logging_seconds) if logging_seconds else None,
        "train_images": len(x),
        "validation_images": len(validation[0]),
        "hidden_layers": spec.hidden_layers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="mlp-512-256-128")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--only", choices=list(CONFIGURATIONS), help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()

    if args.only:
        print(json.dumps(run_configuration(args.only, args.variant, args.epochs)))
        return

    peak = sgemm_peak()
    print(f"float32 matrix-multiply peak (TensorFlow): {peak / 1e9:.0f} GFLOP/s")
    print(f"{args.variant}, {args.epochs} epochs per configuration\n")
    header = f"{'configuration':<20} {'s/epoch':>8} {'median':>7} {'speed-up':>8} {'GFLOP/s':>8} {'of peak':>8} {'epoch 1':>8} {'peak RSS':>9} {'val acc':>8}"
    print(header)
    results = {}
    for name in CONFIGURATIONS:
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.training", "--only", name, "--variant", args.variant, "--epochs", str(args.epochs)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = results[name] = json.loads(child.stdout.strip().splitlines()[-1])
        flops = dense_flops(result["hidden_layers"], result["train_images"], result["validation_images"])
        rate = flops / result["seconds_per_epoch"]
        speed_up = results["notebook"]["seconds_per_epoch"] / result["seconds_per_epoch"]
        print(
            f"{name:<20} {result['seconds_per_epoch']:>8.3f} {result['median_epoch']:>7.3f} {speed_up:>7.2f}x {rate / 1e9:>8.0f} {rate / peak:>8.0%} "
            f"{result['first_epoch']:>7.2f}s {result['peak_rss_mb']:>7.0f}MB {result['val_accuracy']:>8.4f}"
        )
    print()
    for name, what in CONFIGURATIONS.items():
        print(f"  {name:<20} {what}")
    project, notebook = results["project"], results["notebook"]
    logging_share = project["logging_ms"] / 1000 / project["seconds_per_epoch"]
    print(f"\nMLflow logging per epoch (project): {project['logging_ms']:.1f} ms = {logging_share:.1%} of an epoch")
    print(
        f"project vs notebook: {notebook['seconds_per_epoch'] / project['seconds_per_epoch']:.2f}x per epoch, "
        f"validation accuracy {100 * (project['val_accuracy'] - notebook['val_accuracy']):+.2f} points"
    )


if __name__ == "__main__":
    main()
