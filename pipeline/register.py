"""Stage `register`, run by every `dvc repro` (always_changed): make the MLflow registry match
DVC's files, without retraining.

After a lost or replaced store (a deleted mlflow.db, a new MLFLOW_TRACKING_URI) each variant's
seed ensemble that evaluate compared is registered again from models/, and the variants' aliases
and `@champion` point where reports/served.json says. When nothing is lost it only checks. When
served.json holds a DVC experiment's results, only that experiment's `@exp-NAME` is pointed.

    python -m pipeline.register
"""

from __future__ import annotations

import json

from pipeline import registry, stage, store
from pipeline.config import load_params
from pipeline.data import DataError, load_split, raw_pixels
from pipeline.paths import PROCESSED_DIR, SERVED_JSON, replicate_model_path, split_path


def compared_ensembles(variants: list[str]) -> tuple[str, dict[str, list[int]], str | None]:
    """The champion, per variant the seeds of the ensemble evaluate compared (its served.json), and the
    DVC experiment they are the results of (None: the main line's)."""
    try:
        summary = json.loads(SERVED_JSON.read_text())
        champion, ensembles, experiment = summary["champion"], summary["ensembles"], summary.get("experiment")
    except FileNotFoundError:
        raise DataError(f"{SERVED_JSON} is missing: run `dvc repro evaluate`") from None
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{SERVED_JSON} is not what evaluate writes ({type(error).__name__}): run `dvc repro -f evaluate`") from None
    if sorted(ensembles) != sorted(variants):
        raise DataError(f"{SERVED_JSON} compares {sorted(ensembles)}, params.yaml has {sorted(variants)}: run `dvc repro`")
    return champion, ensembles, experiment


def register() -> dict[str, int]:
    params = load_params()
    store.check_store()
    # The workspace's results, whoever runs this: a plain `dvc repro` after `dvc exp run` finds the
    # experiment's results still there, and they must not move the main line's aliases either.
    champion, ensembles, experiment = compared_ensembles(list(params.variants))
    files = {variant: {seed: replicate_model_path(variant, seed) for seed in seeds} for variant, seeds in ensembles.items()}
    example = raw_pixels(load_split(split_path("test", PROCESSED_DIR))[0][:1])
    versions, again = registry.ensure_registered(files, example, "register", experiment)
    for variant in again:
        registry.describe_registered_again(variant, versions[variant])
    alias = registry.set_champion(versions[champion], champion, experiment)
    if experiment:
        print(
            f"register: the workspace holds experiment {experiment}'s results: its champion {champion} is @{alias} "
            f"(version {versions[champion]}); @champion and the variants' aliases stay the main line's ({registry.RETURN_TO_MAIN_LINE})"
        )
        return versions
    retired = registry.retire_aliases(list(params.variants))
    if retired:
        print(
            f"register: retired {', '.join(f'@{alias}' for alias in retired)}: no longer in params.yaml, so no longer served "
            f"(the versions stay in the registry, tagged {registry.RETIRED_TAG})"
        )
    restored = f"; registered again from models/: {', '.join(again)}" if again else "; nothing was missing"
    print(f"register: {len(versions)} variant{'s' * (len(versions) != 1)} in the registry, @champion = {champion} (version {versions[champion]}){restored}")
    return versions


def main() -> None:
    register()


if __name__ == "__main__":
    stage.run("register", main)
