"""Promote the search's best designs into params.yaml as variants; `dvc repro` then confirms them.

The top `search.promote` complete trials (best mean validation accuracy over the search's seeds,
one per design) become variants named from their design, each written as its overrides of `train`,
and get an entry under `promoted` with the trial's score. The ordinary pipeline then trains each
with `train.seeds`, fresh draws the search never saw, and evaluate sets the search's score beside
the confirmed one (reports/promoted.csv). params.yaml keeps its comments; it is checked whole
before it is replaced, and replaced whole.

    python -m pipeline.promote [--top K]
"""

from __future__ import annotations

import argparse
import io

import optuna
from optuna.trial import TrialState
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from pipeline import stage, studies
from pipeline.config import Params, VariantSpec, load_params, parse_params
from pipeline.errors import PipelineError, without_credentials
from pipeline.files import atomic_write
from pipeline.paths import PARAMS_FILE

# Written for every promoted variant, like the ten's: the axes the studies vary.
ALWAYS_WRITTEN = ("hidden_layers", "batch_norm", "dropout")


def best_trials(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    """The `top` best complete trials, one per design (a retried trial repeats one)."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number))
    chosen, designs = [], []
    for trial in complete:
        if trial.user_attrs["spec"] not in designs:
            chosen.append(trial)
            designs.append(trial.user_attrs["spec"])
    return chosen[:top]


def overrides(params: Params, spec: VariantSpec) -> dict:
    """What a variant must write for `spec`: its settings that differ from train's, and the studies' axes."""
    shared = params.train.model_dump()
    written = spec.model_dump()
    differing = {key: value for key, value in written.items() if shared.get(key, VariantSpec.model_fields[key].default) != value}
    return {**{key: written[key] for key in ALWAYS_WRITTEN}, **differing}


def promote(params: Params, top: int, path=PARAMS_FILE) -> list[str]:
    """Write the `top` best designs into params.yaml; their variant names (those already there are kept as they are)."""
    settings = params.search
    storage = studies.open_storage(settings)
    where = without_credentials(studies.storage_url(settings)[0])
    try:
        study = optuna.load_study(study_name=settings.study, storage=storage)
    except KeyError:
        raise PipelineError(f"no study {settings.study} in {where}: run `make search` first") from None
    trials = best_trials(study, top)
    if not trials:
        raise PipelineError(f"study {settings.study} in {where} has no complete trial yet: run `make search`")
    if len(trials) < top:
        complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        print(f"promote: {len(trials)} of the {top} asked: study {settings.study} has {len(trials)} distinct designs among its {complete} complete trials")

    yaml = YAML()  # round trip: params.yaml keeps its comments and layout
    yaml.width = 4096
    yaml.representer.add_representer(type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = yaml.load(path.read_text())
    if document.get("promoted") is None or not document["promoted"]:
        document["promoted"] = CommentedMap()
    added = []
    for trial in trials:
        name, spec = trial.user_attrs["variant"], VariantSpec.model_validate(trial.user_attrs["spec"])
        if name in document["variants"]:
            print(f"promote: {name} (trial {trial.number}) is a variant already: left as it is")
            continue
        entry = CommentedMap()
        for key, value in overrides(params, spec).items():
            if isinstance(value, list):
                value = CommentedSeq(value)
                value.fa.set_flow_style()
            entry[key] = value
        document["variants"][name] = entry
        document["variants"].yaml_set_comment_before_after_key(
            name, before=f"From the search: study {settings.study}, trial {trial.number}", indent=2
        )
        origin = CommentedMap(study=settings.study, trial=trial.number, seeds=CommentedSeq(settings.seeds), val_accuracy=round(trial.value, 6))
        origin["seeds"].fa.set_flow_style()
        origin.fa.set_flow_style()
        document["promoted"][name] = origin
        added.append((name, trial, spec))

    text = io.StringIO()
    yaml.dump(document, text)
    checked = parse_params(YAML(typ="safe").load(text.getvalue()))  # the whole new file, before it replaces the old one
    for name, trial, spec in added:
        if checked.variants[name] != spec:  # what DVC will train must be what the search scored
            raise PipelineError(f"promote: {name} would not train as trial {trial.number} did: params.yaml left as it was")
    with atomic_write(path, "w") as f:
        f.write(text.getvalue())
    for name, trial, _ in added:
        print(f"promote: {name} (trial {trial.number}, val_accuracy {trial.value:.4f} over seeds {settings.seeds}) is now a variant")
    if added:
        print("promote: `dvc repro` trains them with train.seeds and compares them with the rest (reports/promoted.csv)")
    return [name for name, _, _ in added]


def main(argv: list[str] | None = None) -> None:
    params = load_params()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=params.search.promote, help=f"how many designs (default search.promote: {params.search.promote})")
    arguments = parser.parse_args(argv)
    if arguments.top < 1:
        parser.error(f"--top must be 1 or more (got {arguments.top})")
    promote(params, arguments.top)


if __name__ == "__main__":
    stage.run("promote", main)
