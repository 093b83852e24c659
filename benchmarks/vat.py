"""What virtual adversarial training costs: a design's five seeds trained together with and without
VAT (`vat_epsilon`), side by side on this machine.

    python -m benchmarks.vat                    # the promoted design, 3 epochs, 2 rounds: ~10 min on a 2-core VM
    python -m benchmarks.vat --variant mlp-512-256-128-bn --epochs 2 --rounds 1

Needs `dvc repro preprocess` first (it reads data/processed). Each configuration trains in a process
of its own, and they take turns, so that this machine's drift hits both alike. Seconds per epoch are
for all five replicates together, the fastest and the median of epochs 2..N (the first compiles).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from benchmarks.training import cpu_model, epoch_clock, sgemm_peak

SEEDS = [0, 1, 2, 3, 4]
VAT_EPSILON = 2.1  # Miyato et al.'s on MNIST (search.RECIPES["miyato-2016"])


def train_in_this_process(variant: str, epochs: int, vat_epsilon: float) -> dict:
    import tensorflow as tf

    from pipeline import training
    from pipeline.config import load_params
    from pipeline.data import load_split
    from pipeline.paths import split_path

    base = load_params()
    spec = base.variants[variant].model_copy(update={"vat_epsilon": vat_epsilon})
    params = base.model_copy(update={"train": base.train.model_copy(update={"max_epochs": epochs}), "variants": {variant: spec}})
    train, validation = load_split(split_path("train")), load_split(split_path("validation"))
    seconds: list[float] = []
    trained = training.train_group(params, variant, SEEDS, tf.distribute.get_strategy(), train, validation, [epoch_clock(seconds)], 0)
    return {"steady": seconds[1:] or seconds, "val_accuracy": [history["val_accuracy"][-1] for _, history in trained.values()]}


def child(variant: str, epochs: int, vat_epsilon: float) -> dict:
    command = [sys.executable, "-m", "benchmarks.vat", "--only", str(vat_epsilon), "--variant", variant, "--epochs", str(epochs)]
    started = time.perf_counter()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {**json.loads(output.strip().splitlines()[-1]), "wall": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", help="default: the first promoted variant in params.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", type=float, help=argparse.SUPPRESS)  # one child process: its vat_epsilon
    args = parser.parse_args()
    if args.only is not None:
        print(json.dumps(train_in_this_process(args.variant, args.epochs, args.only)))
        return

    from pipeline.config import load_params

    variant = args.variant or next(iter(load_params().promoted), None)
    if variant is None:
        sys.exit("benchmarks.vat: no promoted variant in params.yaml: name one with --variant")
    peak = sgemm_peak()
    print(f"{cpu_model()}, float32 matrix-multiply peak {peak / 1e9:.0f} GFLOP/s (benchmarks.training)")
    print(f"{variant}: seeds {SEEDS} together, {args.epochs} epochs, {args.rounds} rounds, taking turns\n")
    runs: dict[float, list[dict]] = {0.0: [], VAT_EPSILON: []}
    for _ in range(args.rounds):
        for epsilon in runs:
            runs[epsilon].append(child(variant, args.epochs, epsilon))
    medians = {}
    for epsilon, results in runs.items():
        steady = [s for run in results for s in run["steady"]]
        medians[epsilon] = statistics.median(steady)
        accuracies = " ".join(f"{a:.4f}" for run in results for a in run["val_accuracy"])
        label = f"vat_epsilon {epsilon:g}" + (" (no VAT)" if not epsilon else "")
        print(f"  {label:<24} {min(steady):7.1f} s/epoch fastest, {medians[epsilon]:7.1f} median; validation accuracy {accuracies}")
    print(f"\n  VAT costs {medians[VAT_EPSILON] / medians[0.0]:.2f}x an epoch (medians)")


if __name__ == "__main__":
    main()
