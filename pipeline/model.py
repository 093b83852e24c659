"""The model: a pure function of a variant spec and a replicate's seed (same both, same initial weights)."""

from __future__ import annotations

import keras

from pipeline.config import VariantSpec
from pipeline.data import IMAGE_PIXELS, NUM_CLASSES

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


def layer_seed(seed: int, layer: int) -> int:
    return seed * SEED_STRIDE + layer


def hidden_initializer(spec: VariantSpec, seed: int, layer: int) -> keras.initializers.Initializer:
    seed = layer_seed(seed, layer)  # explicit seeds: the weights do not depend on global state
    if spec.initializer == "random_normal":
        first, later = spec.init_stddev
        return keras.initializers.RandomNormal(stddev=first if layer == 0 else later, seed=seed)
    return INITIALIZERS[spec.initializer](seed=seed)


def build_model(spec: VariantSpec, seed: int, steps_per_execution: int = 1) -> keras.Sequential:
    """Dense -> [BatchNormalization] -> [Dropout] per hidden layer, then a softmax layer.

    steps_per_execution changes how fast it trains, not what it learns.
    """
    layers: list[keras.layers.Layer] = [keras.Input(shape=(IMAGE_PIXELS,), name="pixels")]
    for index, units in enumerate(spec.hidden_layers):
        number = index + 1
        kernel_initializer = hidden_initializer(spec, seed, index)
        layers.append(
            keras.layers.Dense(units, activation=spec.activation, kernel_initializer=kernel_initializer, name=f"hidden_{number}")
        )
        if spec.batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"batch_norm_{number}"))
        if spec.dropout:
            layers.append(keras.layers.Dropout(spec.dropout, seed=layer_seed(seed, index), name=f"dropout_{number}"))
    output_initializer = INITIALIZERS[spec.output_initializer](seed=layer_seed(seed, len(spec.hidden_layers)))
    layers.append(
        keras.layers.Dense(NUM_CLASSES, activation="softmax", name="digit", kernel_initializer=output_initializer)
    )
    model = keras.Sequential(layers, name="mlp")
    model.compile(
        optimizer=OPTIMIZERS[spec.optimizer](learning_rate=spec.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
        jit_compile=spec.jit_compile,
    )
    return model


def dense_kernels(model: keras.Model) -> dict[str, "keras.Variable"]:
    """Each Dense layer's kernel by layer name: what the weight violins show.

    Looked up by layer type, not by position in get_weights(), which for BatchNorm
    models interleaves gamma, beta and the moving statistics with the kernels.
    """
    return {layer.name: layer.kernel for layer in model.layers if isinstance(layer, keras.layers.Dense)}
