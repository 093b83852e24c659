"""Stage `validate`, the first of every `dvc repro`: the whole params.yaml checked before any stage
runs, so a mistake in it stops DVC before it removes any stage's outputs.

DVC deletes a stage's outputs just before it runs the stage's command; every other stage depends on
this stage's output, so a bad params.yaml fails here and nothing trained is touched. The output's
content never changes, so a fixed params.yaml reruns nothing downstream.

    python -m pipeline.validate
"""

from __future__ import annotations

from pipeline import stage
from pipeline.config import load_params
from pipeline.files import atomic_write
from pipeline.paths import VALIDATED_PARAMS

# The same bytes whatever the params: what changed is read by each stage from params.yaml itself.
STAMP = "params.yaml passed pipeline/config.py's checks (every stage of dvc.yaml runs after this one).\n"


def validate() -> None:
    params = load_params()
    with atomic_write(VALIDATED_PARAMS, "w") as f:
        f.write(STAMP)
    print(f"validate: params.yaml is valid: {len(params.variants)} variants, seeds {params.train.seeds}")


def main() -> None:
    validate()


if __name__ == "__main__":
    stage.run("validate", main)
