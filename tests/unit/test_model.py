import keras
import numpy as np
import pytest

from pipeline.config import parameter_count
from pipeline.model import build_model, build_replicates, dense_kernels
from pipeline.plots import weight_violins

# Total params as the notebooks' model.summary() printed them (Dropout adds none).
NOTEBOOK_PARAM_COUNTS = {
    "mlp-256-64": 218_058,
    "mlp-256-64-bn": 219_338,
    "mlp-256-64-bn-dropout": 219_338,
    "mlp-512-256-128": 567_434,
    "mlp-512-256-128-bn": 571_018,
    "mlp-512-256-128-bn-dropout": 571_018,
    "mlp-512-256-128-64-32": 576_810,
    "mlp-512-256-128-64-32-bn": 580_778,
    "mlp-512-256-128-64-32-bn-dropout": 580_778,
    "mlp-256-256-he-dropout": 269_322,
}


def test_the_ten_variants_have_the_notebooks_parameter_counts(default_params):
    ten = {name: default_params.variants[name] for name in NOTEBOOK_PARAM_COUNTS}  # promoted designs ship beside them
    assert {name: build_model(spec, 0).count_params() for name, spec in ten.items()} == NOTEBOOK_PARAM_COUNTS
    # The count config.py's memory bound rests on, before any model is built.
    assert {name: parameter_count(spec) for name, spec in ten.items()} == NOTEBOOK_PARAM_COUNTS


def test_the_promoted_design_counts_its_parameters_by_hand(default_params):
    """1024-512-256-128 with BatchNorm: the Dense kernels and biases, and four numbers per
    normalised unit (scale, offset, moving mean and variance); VAT adds a loss, no weights, and
    noise layers hold none either."""
    spec = default_params.variants["mlp-1024-512-256-128-bn-cos-vat2p1-t0"]
    dense = 784 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    by_hand = dense + 4 * (1024 + 512 + 256 + 128)
    assert by_hand == 1_501_834
    assert build_model(spec, 0).count_params() == parameter_count(spec) == by_hand
    noisy = spec.model_copy(update={"input_noise": 0.3, "hidden_noise": 0.3})
    assert build_model(noisy, 0).count_params() == parameter_count(noisy) == by_hand


def test_layers_go_dense_then_batch_norm_then_dropout(default_params):
    model = build_model(default_params.variants["mlp-512-256-128-bn-dropout"], 0)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Dense", "BatchNormalization", "Dropout"] * 3 + ["Dense"]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.5] * 3
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.layers[0].activation.__name__ == "relu"


def test_the_second_study_uses_he_normal_and_dropout_0_4(default_params):
    spec = default_params.variants["mlp-256-256-he-dropout"]
    model = build_model(spec, 0)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert isinstance(model.layers[0].kernel_initializer, keras.initializers.HeNormal)
    assert isinstance(model.layers[-1].kernel_initializer, keras.initializers.GlorotNormal)
    assert (spec.batch_size, spec.epochs, spec.learning_rate) == (512, 150, 0.001)


@pytest.mark.parametrize(
    "variant, first, later", [("mlp-512-256-128", 0.062, 0.125), ("mlp-512-256-128-bn", 0.039, 0.55)]
)
def test_random_normal_kernels_have_the_notebooks_stddevs(default_params, variant, first, later):
    kernels = list(dense_kernels(build_model(default_params.variants[variant], 0)).values())
    assert np.std(kernels[0]) == pytest.approx(first, rel=0.02)
    assert np.std(kernels[1]) == pytest.approx(later, rel=0.02)
    assert np.std(kernels[2]) == pytest.approx(later, rel=0.03)


def test_the_same_spec_builds_the_same_weights(default_params):
    spec = default_params.variants["mlp-256-64-bn-dropout"]
    first, second = build_model(spec, 0).get_weights(), build_model(spec, 0).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    reseeded = build_model(spec, 1).get_weights()
    assert not np.array_equal(first[0], reseeded[0])


def test_replicates_share_no_random_stream(default_params):
    # Seed 1's first layer must not be seed 0's second layer: every layer of every replicate has its own seed.
    spec = default_params.variants["mlp-256-256-he-dropout"]  # he_normal: same stddev rule for both layers
    seed_0 = dense_kernels(build_model(spec, 0))
    seed_1 = dense_kernels(build_model(spec, 1))
    second_of_0 = np.asarray(seed_0["hidden_2"]).ravel()[:1000]
    first_of_1 = np.asarray(seed_1["hidden_1"]).ravel()[:1000]
    assert abs(np.corrcoef(second_of_0, first_of_1)[0, 1]) < 0.2


def test_violins_show_the_dense_kernels_of_a_batch_norm_model(default_params):
    model = build_model(default_params.variants["mlp-256-64-bn"], 0)
    kernels = dense_kernels(model)
    # get_weights() by position would hand the violins BatchNorm's gamma/beta/mean/variance.
    assert {name: tuple(kernel.shape) for name, kernel in kernels.items()} == {
        "hidden_1": (784, 256),
        "hidden_2": (256, 64),
        "digit": (64, 10),
    }
    assert [tuple(w.shape) for w in model.get_weights()][2:4] == [(256,), (256,)]  # BN, not a kernel

    figure = weight_violins({0: kernels, 1: dense_kernels(build_model(default_params.variants["mlp-256-64-bn"], 1))}, "mlp-256-64-bn")
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["hidden_1", "hidden_2", "digit"]
    # The violins span the kernels' own ranges: hidden_2's stddev 0.55 dwarfs hidden_1's 0.039.
    low, high = axis.get_ylim()
    everything = np.concatenate([np.asarray(kernel).ravel() for kernel in kernels.values()])
    assert low <= everything.min() < -1.0 and high >= everything.max() > 1.0


def test_max_norm_bounds_each_hidden_units_incoming_weights(default_params):
    """After training steps at a large learning rate, every column of every hidden kernel has norm <= c
    (numpy's norm), where the same network unbounded exceeds it; the softmax layer is left free."""
    from pipeline.model import build_network

    spec = default_params.variants["mlp-256-64"].model_copy(update={"max_norm": 0.5, "learning_rate": 0.05})
    rng = np.random.default_rng(0)
    x, y = rng.random((512, 784), dtype=np.float32), keras.utils.to_categorical(rng.integers(0, 10, 512), 10)
    norms = {}
    for bound in (0.5, None):
        network = build_network(spec.model_copy(update={"max_norm": bound}), seed=0)
        network.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
        network.fit(x, y, batch_size=64, epochs=2, verbose=0)
        norms[bound] = {name: np.linalg.norm(np.asarray(kernel), axis=0).max() for name, kernel in dense_kernels(network).items()}
    assert max(norms[0.5]["hidden_1"], norms[0.5]["hidden_2"]) <= 0.5 + 1e-5
    assert min(norms[None]["hidden_1"], norms[None]["hidden_2"]) > 0.5  # the bound bit
    assert network.get_layer("digit").kernel_constraint is None


@pytest.mark.parametrize("for_xla_training", [False, True])
def test_input_dropout_drops_pixels_before_the_first_layer(default_params, for_xla_training):
    from pipeline.model import ThreefryDropout, build_network

    spec = default_params.variants["mlp-256-64"].model_copy(update={"input_dropout": 0.25})
    network = build_network(spec, seed=3, for_xla_training=for_xla_training)
    first = network.layers[0]
    assert first.name == "input_dropout" and type(first) is (ThreefryDropout if for_xla_training else keras.layers.Dropout)
    import tensorflow as tf

    drop = tf.function(lambda x: first(x, training=True), jit_compile=True)  # ThreefryDropout trains under XLA only
    kept = drop(tf.ones((200, 784))).numpy()
    assert set(np.unique(kept)) == {0.0, np.float32(1 / 0.75)}  # dropped, or scaled up by 1 / (1 - rate)
    assert abs((kept == 0).mean() - 0.25) < 0.01  # 156,800 Bernoulli(0.25) draws: sd 0.0011
    assert np.array_equal(np.asarray(first(np.ones((2, 784)), training=False)), np.ones((2, 784)))


def test_a_spec_without_the_search_settings_builds_the_layers_it_always_did(default_params):
    network = build_model(default_params.variants["mlp-256-64-bn-dropout"], 0)
    assert [layer.name for layer in network.layers] == [
        "hidden_1", "batch_norm_1", "dropout_1", "hidden_2", "batch_norm_2", "dropout_2", "digit"
    ]
    assert all(layer.kernel_constraint is None for layer in network.layers if isinstance(layer, keras.layers.Dense))


@pytest.mark.parametrize(
    "schedule, fraction, expected",
    [  # 150 epochs at 2e-3, as Rasmus et al.'s baseline: held for 100, then linearly to zero over the last 50
        ("linear", 1 / 3, {0: 2e-3, 99: 2e-3, 100: 2e-3, 125: 1e-3, 149: 2e-3 / 50}),
        ("linear", 1.0, {0: 2e-3, 75: 1e-3, 149: 2e-3 / 150}),
        ("cosine", 1.0, {0: 2e-3, 50: 2e-3 * 0.75, 75: 1e-3, 100: 2e-3 * 0.25}),  # (1 + cos(pi e / 150)) / 2
        ("constant", 1.0, {0: 2e-3, 149: 2e-3}),
    ],
)
def test_the_learning_rate_at_hand_worked_epochs(default_params, schedule, fraction, expected):
    from pipeline.model import learning_rate_at

    spec = default_params.variants["mlp-256-64"].model_copy(update={"learning_rate": 2e-3, "lr_schedule": schedule, "decay_fraction": fraction})
    assert {epoch: learning_rate_at(spec, epoch, 150) for epoch in expected} == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("for_xla_training", [False, True])
def test_gaussian_noise_has_its_stddev_in_training_and_is_absent_at_inference(default_params, canonical_arrays, for_xla_training):
    import tensorflow as tf

    from pipeline.data import to_features
    from pipeline.model import ThreefryGaussianNoise, build_network

    plain = default_params.variants["mlp-256-64-bn"]
    noisy = plain.model_copy(update={"input_noise": 0.3, "hidden_noise": 0.3})
    network = build_network(noisy, seed=4, for_xla_training=for_xla_training)
    assert [layer.name for layer in network.layers] == [
        "input_noise", "hidden_1", "batch_norm_1", "noise_1", "hidden_2", "batch_norm_2", "noise_2", "digit"
    ]
    noise = network.get_layer("input_noise")
    assert type(noise) is (ThreefryGaussianNoise if for_xla_training else keras.layers.GaussianNoise)
    drawn = tf.function(lambda x: noise(x, training=True), jit_compile=True)(tf.zeros((400, 784))).numpy()
    assert abs(drawn.mean()) < 0.003 and abs(drawn.std() - 0.3) < 0.003  # 313,600 draws: se of the sd 0.0004

    # At inference the noisy network is the plain one with the same weights (noise layers hold none).
    images = to_features(canonical_arrays["x_test"][:64].reshape(64, 784))
    reference = build_network(plain, seed=4)
    reference.set_weights(network.get_weights())
    np.testing.assert_array_equal(network.predict_on_batch(images), reference.predict_on_batch(images))
    training = tf.function(lambda x: network(x, training=True), jit_compile=True)  # Threefry's draws run under XLA
    assert not np.array_equal(training(images), training(images))  # noise in training


def linear_softmax(weights: np.ndarray, bias: np.ndarray) -> keras.Model:
    """pixels -> softmax(pixels @ weights + bias), in float64: a network whose VAT direction is worked by hand."""
    network = keras.Sequential([keras.Input(shape=(784,), dtype="float64"), keras.layers.Dense(10, activation="softmax", dtype="float64")])
    network.layers[0].set_weights([weights, bias])
    return network


@pytest.mark.parametrize("under_xla", [False, True])
def test_the_vat_perturbation_has_norm_epsilon_and_points_where_the_prediction_bends_most(under_xla):
    """One power iteration from probe d: the gradient of KL(p || q(x + xi d)) is xi H d to first order,
    H = W (diag(p) - p p^T) W^T the divergence's curvature in the pixels for logits x W + b (worked by
    hand: the Hessian of KL in the logits is diag(p) - p p^T). So the perturbation is epsilon H d / |H d|."""
    import tensorflow as tf

    from pipeline.model import VAT_XI, adversarial_perturbation

    rng = np.random.default_rng(7)
    weights, bias = rng.normal(0, 0.1, (784, 10)), rng.normal(0, 0.1, 10)
    pixels = rng.random((6, 784))
    logits = pixels @ weights + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    seed = tf.constant([3, 11], tf.int32)
    network, algorithm = linear_softmax(weights, bias), "threefry" if under_xla else "auto_select"
    perturb = tf.function(lambda x, q: adversarial_perturbation(network, x, q, 2.0, seed, under_xla), jit_compile=under_xla)
    perturbation = perturb(tf.constant(pixels), tf.constant(p)).numpy()

    np.testing.assert_allclose(np.linalg.norm(perturbation, axis=1), 2.0, rtol=1e-9)
    # The same random probe the function starts from (same seed, same algorithm), then the hand-worked H d.
    draw = tf.function(lambda: tf.random.stateless_normal((6, 784), seed, dtype=tf.float64, alg=algorithm), jit_compile=under_xla)
    probe = draw().numpy()
    for row in range(6):
        curvature = weights @ (np.diag(p[row]) - np.outer(p[row], p[row])) @ weights.T
        expected = curvature @ probe[row]
        cosine = expected @ perturbation[row] / (np.linalg.norm(expected) * 2.0)
        assert cosine > 1 - 1e-4, (row, cosine)
    assert VAT_XI == 1e-6  # Miyato et al.'s probe size, at which the first-order step above holds


def test_vat_adds_its_divergence_to_the_training_loss_only(default_params):
    """A together model with vat_epsilon: its training loss is cross-entropy plus, per replicate, KL(p || p(x + r_adv)),
    recomputed here from the networks' own predictions; validation's loss is cross-entropy alone."""
    import tensorflow as tf

    from pipeline.model import VirtualAdversarialReplicates, adversarial_perturbation, build_replicates

    spec = default_params.variants["mlp-256-64"].model_copy(update={"vat_epsilon": 2.0, "jit_compile": False})
    plain_spec = spec.model_copy(update={"vat_epsilon": 0.0})
    assert not isinstance(build_replicates(plain_spec, [0, 1]), VirtualAdversarialReplicates)  # off: the model every variant always trained
    model = build_replicates(spec, [0, 1])
    rng = np.random.default_rng(0)
    pixels = rng.random((32, 784)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 32)]
    x = {key: tf.constant(pixels) for key in ("seed_0", "seed_1")}
    y = {key: tf.constant(labels) for key in x}
    y_pred = model(x, training=True)  # no Dropout, noise or BatchNorm: training mode is deterministic here
    states = {key: model.direction_seeds[key].state.numpy().copy() for key in x}  # the seeds the loss will draw

    cross_entropy = float(model.compute_loss(x, y, y_pred, training=False))
    with_vat = float(model.compute_loss(x, y, y_pred, training=True))
    expected_ce = sum(keras.losses.categorical_crossentropy(labels, y_pred[key].numpy()).numpy().mean() for key in x)
    assert cross_entropy == pytest.approx(expected_ce, rel=1e-5)
    divergences = 0.0
    for key in x:
        network, p = model.get_layer(f"mlp_{key}"), y_pred[key].numpy()
        seed = tf.cast(tf.math.floormod(states[key], tf.int32.max - 1), tf.int32)
        q = network(pixels + adversarial_perturbation(network, x[key], tf.constant(p), 2.0, seed), training=True).numpy()
        divergences += np.mean(np.sum(p * np.log(p / q), axis=1))  # KL by its definition
    assert divergences > 0
    assert with_vat == pytest.approx(expected_ce + divergences, rel=1e-4)


def test_vat_is_refused_where_replicates_do_not_train_together(default_params):
    from pipeline.config import Params

    raw = default_params.model_dump()
    raw["train"]["strategy"] = "multi_worker"
    for spec in raw["variants"].values():  # the shipped promoted design trains with VAT: only one variant here
        spec["vat_epsilon"] = 0.0
    raw["variants"]["mlp-256-64"]["vat_epsilon"] = 2.0
    with pytest.raises(ValueError, match="variants mlp-256-64: vat_epsilon is not available with train.strategy multi_worker"):
        Params.model_validate(raw)


@pytest.mark.parametrize("under_xla", [False, True], ids=["tf-function", "xla"])
def test_vat_leaves_batchnorm_moving_statistics_to_the_clean_images(default_params, under_xla):
    """One VAT training step on one batch: every copy's first BatchNorm holds momentum * its start
    (0 and 1) + (1 - momentum) * the clean batch's mean and variance of relu(pixels @ W + b), worked in
    numpy from the initial weights, as one plain training step would leave it. The perturbed passes,
    had they counted, would have moved it twice more."""
    spec = default_params.variants["mlp-256-64-bn"].model_copy(update={"vat_epsilon": 2.0, "jit_compile": under_xla})
    seeds = [0, 1]
    model = build_replicates(spec, seeds)
    rng = np.random.default_rng(1)
    pixels = rng.random((64, 784)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 64)]
    initial = {seed: model.get_layer(f"mlp_seed_{seed}").get_layer("hidden_1").get_weights() for seed in seeds}
    model.fit({f"seed_{seed}": pixels for seed in seeds}, {f"seed_{seed}": labels for seed in seeds}, batch_size=64, epochs=1, verbose=0)
    for seed in seeds:
        kernel, bias = (w.astype("float64") for w in initial[seed])
        hidden = np.maximum(pixels.astype("float64") @ kernel + bias, 0)
        norm = model.get_layer(f"mlp_seed_{seed}").get_layer("batch_norm_1")
        momentum = norm.momentum
        np.testing.assert_allclose(norm.moving_mean.numpy(), (1 - momentum) * hidden.mean(axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(norm.moving_variance.numpy(), momentum + (1 - momentum) * hidden.var(axis=0), rtol=1e-4, atol=1e-6)
