"""The model: a pure function of a variant spec and a replicate's seed (same both, same initial weights)."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import VariantSpec
from pipeline.data import IMAGE_PIXELS, NUM_CLASSES
from pipeline.errors import DataError

INITIALIZERS = {
    "glorot_uniform": keras.initializers.GlorotUniform,
    "glorot_normal": keras.initializers.GlorotNormal,
    "he_normal": keras.initializers.HeNormal,
    "he_uniform": keras.initializers.HeUniform,
    "lecun_normal": keras.initializers.LecunNormal,
}
OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


# Each replicate's layers draw from seeds of their own, seed * SEED_STRIDE + layer, so that no two
# replicates share a random stream (seed 0 keeps the seeds 0, 1, 2, ... of the one-seed pipeline).
SEED_STRIDE = 1000


INPUT_LAYER = SEED_STRIDE - 1  # the input Dropout's seed slot: no hidden layer reaches it (MAX_HIDDEN_LAYERS)
INPUT_NOISE_LAYER = SEED_STRIDE - 2  # the input noise's
VAT_DIRECTION_SLOT = SEED_STRIDE - 3  # VAT's random probe directions
HIDDEN_NOISE_OFFSET = SEED_STRIDE // 2  # hidden layer i's noise: slot i + this, apart from its Dropout's (i)


def layer_seed(seed: int, layer: int) -> int:
    return seed * SEED_STRIDE + layer


def hidden_initializer(spec: VariantSpec, seed: int, layer: int) -> keras.initializers.Initializer:
    seed = layer_seed(seed, layer)  # explicit seeds: the weights do not depend on global state
    if spec.initializer == "random_normal":
        first, later = spec.init_stddev
        return keras.initializers.RandomNormal(stddev=first if layer == 0 else later, seed=seed)
    return INITIALIZERS[spec.initializer](seed=seed)


def next_stateless_seed(generator: keras.random.SeedGenerator) -> tf.Tensor:
    """The generator's next seed for TensorFlow's stateless ops: Keras' seed state is int64, the
    stateless ops want int32, folded as Keras folds it."""
    return tf.cast(tf.math.floormod(generator.next(), tf.int32.max - 1), tf.int32)


class ThreefryDropout(keras.layers.Dropout):
    """Keras' Dropout with its masks drawn by the Threefry algorithm, for training under XLA.

    Keras draws them with TensorFlow's "auto_select" algorithm, which XLA on a CPU turns into a
    mask many times slower than the layer's matrix products (docs/training-speed.md); an explicit
    Threefry costs little there. Same seed, same masks. Only training draws masks, so the saved
    models carry Keras' own Dropout (export_replicate).
    """

    def call(self, inputs, training=False):
        if not (training and self.rate > 0):
            return inputs
        keep = tf.random.stateless_uniform(tf.shape(inputs), next_stateless_seed(self.seed_generator), alg="threefry") >= self.rate
        return tf.where(keep, inputs / (1 - self.rate), tf.zeros_like(inputs))


class ThreefryGaussianNoise(keras.layers.GaussianNoise):
    """Keras' GaussianNoise with its noise drawn by the Threefry algorithm, for training under XLA
    (as ThreefryDropout: Keras' draw is many times slower there). Inert at inference, like Keras'
    own, which the saved models carry."""

    def call(self, inputs, training=False):
        if not (training and self.stddev > 0):
            return inputs
        seed = next_stateless_seed(self.seed_generator)
        return inputs + self.stddev * tf.random.stateless_normal(tf.shape(inputs), seed, dtype=inputs.dtype, alg="threefry")


def build_network(spec: VariantSpec, seed: int, name: str = "mlp", for_xla_training: bool = False) -> keras.Sequential:
    """[Gaussian noise on the pixels] [Dropout of the pixels], then per hidden layer Dense ->
    [BatchNormalization] -> [Gaussian noise] -> [Dropout] (the Dense kernels under a MaxNorm
    constraint if the spec bounds them), then a softmax layer; not compiled.

    for_xla_training swaps in ThreefryDropout and ThreefryGaussianNoise, the one difference between
    what trains and what is saved.
    """
    dropout_layer = ThreefryDropout if for_xla_training else keras.layers.Dropout
    noise_layer = ThreefryGaussianNoise if for_xla_training else keras.layers.GaussianNoise
    layers: list[keras.layers.Layer] = [keras.Input(shape=(IMAGE_PIXELS,), name="pixels")]
    if spec.input_noise:
        layers.append(noise_layer(spec.input_noise, seed=layer_seed(seed, INPUT_NOISE_LAYER), name="input_noise"))
    if spec.input_dropout:
        layers.append(dropout_layer(spec.input_dropout, seed=layer_seed(seed, INPUT_LAYER), name="input_dropout"))
    for index, units in enumerate(spec.hidden_layers):
        number = index + 1
        kernel_initializer = hidden_initializer(spec, seed, index)
        # Each unit's incoming weights (the kernel's column, axis 0) rescaled after every step to norm <= max_norm.
        constraint = keras.constraints.MaxNorm(spec.max_norm, axis=0) if spec.max_norm else None
        layers.append(
            keras.layers.Dense(
                units, activation=spec.activation, kernel_initializer=kernel_initializer, kernel_constraint=constraint, name=f"hidden_{number}"
            )
        )
        if spec.batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"batch_norm_{number}"))
        if spec.hidden_noise:
            layers.append(noise_layer(spec.hidden_noise, seed=layer_seed(seed, HIDDEN_NOISE_OFFSET + index), name=f"noise_{number}"))
        if spec.dropout:
            layers.append(dropout_layer(spec.dropout, seed=layer_seed(seed, index), name=f"dropout_{number}"))
    output_initializer = INITIALIZERS[spec.output_initializer](seed=layer_seed(seed, len(spec.hidden_layers)))
    layers.append(
        keras.layers.Dense(NUM_CLASSES, activation="softmax", name="digit", kernel_initializer=output_initializer)
    )
    return keras.Sequential(layers, name=name)


def learning_rate_at(spec: VariantSpec, epoch: int, epochs: int) -> float:
    """The learning rate of epoch `epoch` (from 0) of `epochs`, by the variant's schedule: constant;
    linear, held then decayed over the final decay_fraction of the epochs, reaching zero after the
    last; cosine, half a cosine from the rate at the first epoch to zero after the last."""
    if spec.lr_schedule == "linear":
        return spec.learning_rate * min(1.0, (epochs - epoch) / (spec.decay_fraction * epochs))
    if spec.lr_schedule == "cosine":
        return spec.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    return spec.learning_rate


def compile_for_training(
    model: keras.Model, spec: VariantSpec, steps_per_execution: int, outputs: list[str] | None = None
) -> keras.Model:
    """The variant's optimizer; cross-entropy and accuracy on every one of `outputs` (the losses summed).

    steps_per_execution changes how fast it trains, not what it learns.
    """
    model.compile(
        optimizer=OPTIMIZERS[spec.optimizer](learning_rate=spec.learning_rate),
        loss={key: "categorical_crossentropy" for key in outputs} if outputs else "categorical_crossentropy",
        metrics={key: ["accuracy"] for key in outputs} if outputs else ["accuracy"],
        steps_per_execution=steps_per_execution,
        jit_compile=spec.jit_compile,
    )
    return model


def build_model(spec: VariantSpec, seed: int, steps_per_execution: int = 1) -> keras.Sequential:
    """One replicate's network, compiled to train alone (the notebooks' way, and multi_worker's)."""
    return compile_for_training(build_network(spec, seed), spec, steps_per_execution)


def replicate_key(seed: int) -> str:
    """The name of a replicate's input and output in a together model, and its metrics' prefix."""
    return f"seed_{seed}"


VAT_XI = 1e-6  # the power iteration's probe: its L2 norm (Miyato et al.'s value)


def unit_rows(vectors: tf.Tensor) -> tf.Tensor:
    """Each row scaled to L2 norm 1 (a zero row stays zero). Divided by its largest entry first: the
    power iteration's gradients are of order 1e-9, whose squares l2_normalize would take for zero."""
    largest = tf.reduce_max(tf.abs(vectors), axis=1, keepdims=True)
    return tf.math.l2_normalize(tf.math.divide_no_nan(vectors, largest), axis=1)


def adversarial_perturbation(
    network: keras.Model, pixels: tf.Tensor, probabilities: tf.Tensor, epsilon: float, seed: tf.Tensor, under_xla: bool = False
) -> tf.Tensor:
    """VAT's perturbation of each image: the direction in which the network's prediction moves most
    (the leading eigenvector of the divergence's curvature, by one power iteration from a random
    direction), scaled to L2 norm epsilon. `probabilities` is the unperturbed prediction, held fixed.
    The random direction is Threefry's under XLA (see ThreefryDropout), which only XLA runs."""
    algorithm = "threefry" if under_xla else "auto_select"
    probe = VAT_XI * unit_rows(tf.random.stateless_normal(tf.shape(pixels), seed, dtype=pixels.dtype, alg=algorithm))
    with tf.GradientTape() as tape:
        tape.watch(probe)
        divergence = tf.reduce_mean(keras.losses.kl_divergence(probabilities, network(pixels + probe, training=True)))
    direction = tf.stop_gradient(tape.gradient(divergence, probe))
    return epsilon * unit_rows(direction)


class VirtualAdversarialReplicates(keras.Model):
    """Replicates side by side (build_replicates) whose loss adds, for each, virtual adversarial
    training's term: the KL divergence between its prediction and its prediction under
    adversarial_perturbation. Training only; validation reports cross-entropy alone. The perturbed
    passes run in training mode (their own noise, their own batch's statistics) but leave BatchNorm's
    moving statistics as the clean pass set them, as Miyato et al. do: inference normalises clean
    images, and statistics averaged with perturbed ones cost about a tenth of a point of accuracy
    here. Only training builds this: the saved replicates are plain networks (export_replicate)."""

    def __init__(self, inputs, outputs, epsilon: float, seeds: list[int], under_xla: bool, **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        self.epsilon, self.under_xla = epsilon, under_xla
        self.direction_seeds = {replicate_key(seed): keras.random.SeedGenerator(layer_seed(seed, VAT_DIRECTION_SLOT)) for seed in seeds}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        if not training:
            return loss
        for key, generator in self.direction_seeds.items():
            network, probabilities = self.get_layer(f"mlp_{key}"), tf.stop_gradient(y_pred[key])
            statistics = moving_statistics(network)
            clean = [tf.identity(variable.value) for variable in statistics]
            perturbation = adversarial_perturbation(network, x[key], probabilities, self.epsilon, next_stateless_seed(generator), self.under_xla)
            loss += tf.reduce_mean(keras.losses.kl_divergence(probabilities, network(x[key] + perturbation, training=True)))
            for variable, value in zip(statistics, clean):  # tf.function orders these after the passes' own updates
                variable.assign(value)
        return loss


def moving_statistics(network: keras.Model) -> list["keras.Variable"]:
    """Every BatchNormalization layer's moving mean and variance: what a training-mode pass updates."""
    layers = [layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)]
    return [variable for layer in layers for variable in (layer.moving_mean, layer.moving_variance)]


def build_replicates(spec: VariantSpec, seeds: list[int], steps_per_execution: int = 1) -> keras.Model:
    """The replicates of `seeds` as one model: independent networks side by side, one input and
    one output each, trained by one compiled program.

    Keras sums the outputs' losses (and with vat_epsilon, each copy's VAT term), and each network's
    weights reach that sum through its own loss only: the optimizer updates every copy exactly as if
    it trained alone. Each copy keeps its seed's initial weights and Dropout masks (the data order
    is the caller's, per input).
    """
    inputs, outputs = {}, {}
    for seed in seeds:
        key = replicate_key(seed)
        network = build_network(spec, seed, name=f"mlp_{key}", for_xla_training=spec.jit_compile)
        inputs[key] = keras.Input(shape=(IMAGE_PIXELS,), name=key)
        outputs[key] = network(inputs[key])
    if spec.vat_epsilon:
        model = VirtualAdversarialReplicates(inputs, outputs, spec.vat_epsilon, seeds, spec.jit_compile, name="replicates")
    else:
        model = keras.Model(inputs, outputs, name="replicates")
    return compile_for_training(model, spec, steps_per_execution, list(outputs))


def export_replicate(replicates: keras.Model, spec: VariantSpec, seed: int) -> keras.Sequential:
    """One copy of a together model as an ordinary Keras model: Keras' own layers, its trained weights."""
    network = build_network(spec, seed)
    network.set_weights(replicates.get_layer(f"mlp_{replicate_key(seed)}").get_weights())
    return network


def dense_kernels(model: keras.Model) -> dict[str, "keras.Variable"]:
    """Each Dense layer's kernel by layer name: what the weight violins show.

    Looked up by layer type, not by position in get_weights(), which for BatchNorm
    models interleaves gamma, beta and the moving statistics with the kernels.
    """
    return {layer.name: layer.kernel for layer in model.layers if isinstance(layer, keras.layers.Dense)}


def has_finite_weights(model: keras.Model) -> bool:
    """No NaN or infinity in any weight: a model that diverged has them."""
    return all(np.isfinite(weights).all() for weights in model.get_weights())


def restore_hint(variant: str) -> str:
    """How to get back what train@VARIANT wrote: from DVC's cache, or by training again."""
    return f"restore with `dvc checkout --force train@{variant}` or retrain with `dvc repro -f -s train@{variant}`"


def load_replicate(path: Path, variant: str) -> keras.Model:
    """A replicate's saved model, or a DataError that names the file and how to get it back."""
    remedy = restore_hint(variant)
    if not Path(path).is_file():
        raise DataError(f"{path} is missing: {remedy}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras says "File not found" of a truncated zip, or a parse error
        raise DataError(f"{path} is not a readable Keras model ({type(error).__name__}): {remedy}") from None
