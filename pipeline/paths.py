"""Where every stage reads and writes, relative to the repository root (where DVC runs stages).

dvc.yaml names the same paths: a change here is a change there.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
VALIDATED_PARAMS = Path("data/params.valid")  # the validate stage's stamp, which every other stage depends on
RAW_NPZ = Path("data/raw/mnist.npz")
RAW_INFO = Path("data/raw/mnist.json")
PROCESSED_DIR = Path("data/processed")
MODELS_DIR = Path("models")
REPORTS_DIR = Path("reports")
TRAIN_REPORTS_DIR = REPORTS_DIR / "train"
HISTORY_DIR = REPORTS_DIR / "history"  # every replicate's per-epoch history
SERVED_JSON = REPORTS_DIR / "served.json"  # the champion and each variant's ensemble: what register serves
DIFFERENCES_DIR = REPORTS_DIR / "differences"  # where the variants differ: per class, calibration, confusion, mistakes
SEARCH_DB = Path("data/search/optuna.db")  # the search's own Optuna storage unless one is shared (docs/search.md)
SEARCH_REPORTS_DIR = REPORTS_DIR / "search"  # the trials' table and Optuna's figures
PROMOTED_CSV = REPORTS_DIR / "promoted.csv"  # each promoted design's score in the search beside its confirmed one
EPOCHS_CSV = REPORTS_DIR / "epochs.csv"  # per variant and epoch, the seeds' mean and band: dvc.yaml overlays the variants


def split_path(name: str, directory: Path = PROCESSED_DIR) -> Path:
    return Path(directory) / f"{name}.npz"


def train_reports_dir(variant: str) -> Path:
    return TRAIN_REPORTS_DIR / variant


def replicate_model_path(variant: str, seed: int) -> Path:
    return MODELS_DIR / variant / f"seed-{seed}.keras"


def replicate_history_path(variant: str, seed: int) -> Path:
    return HISTORY_DIR / variant / f"seed-{seed}.csv"
