"""pipeline/promote.py in-process: a study in a temporary SQLite file, its trials made by hand with
Optuna's own create_trial, promoted into a copy of the shipped params.yaml."""

import shutil

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from pipeline.config import VariantSpec, load_params
from pipeline.errors import PipelineError
from pipeline.promote import promote
from tests.helpers import REPO_ROOT

DISTRIBUTIONS = {"dropout": FloatDistribution(0.0, 0.5)}


def trial(params, value, dropout, state=TrialState.COMPLETE, name=None):
    """A finished trial as the search records it: its design's spec (train's settings, the design's
    own) and variant name in user_attrs."""
    shared = {key: setting for key, setting in params.train.model_dump().items() if key in VariantSpec.model_fields}
    spec = VariantSpec.model_validate({**shared, "hidden_layers": [64], "batch_norm": True, "dropout": dropout,
                                       "initializer": "he_normal", "init_stddev": None})
    return create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None, params={"dropout": dropout}, distributions=DISTRIBUTIONS,
        user_attrs={"spec": spec.model_dump(), "variant": name or f"mlp-64-bn-drop{round(dropout * 100)}"},
    )


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A checkout's params.yaml and its search study in data/search/optuna.db, the working directory."""
    shutil.copy2(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data/search").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    params = load_params(tmp_path / "params.yaml")
    study = optuna.create_study(study_name=params.search.study, storage=f"sqlite:///{tmp_path}/data/search/optuna.db", direction="maximize")
    return tmp_path, params, study


def test_the_best_complete_designs_become_variants_with_their_scores(workspace):
    root, params, study = workspace
    for made in (trial(params, 0.97, 0.1), trial(params, 0.99, 0.2), trial(params, None, 0.3, TrialState.PRUNED),
                 trial(params, 0.98, 0.4), trial(params, 0.985, 0.2, name="mlp-64-bn-drop20-retried")):  # the same design again: promoted once
        study.add_trial(made)
    before = (root / "params.yaml").read_text()

    assert promote(params, 2, root / "params.yaml") == ["mlp-64-bn-drop20", "mlp-64-bn-drop40"]

    after = (root / "params.yaml").read_text()
    kept = [line for line in before.splitlines() if line != "promoted: {}"]
    remaining = iter(after.splitlines())
    assert all(line in remaining for line in kept)  # every line, comments too, in their order
    promoted = load_params(root / "params.yaml")
    assert list(promoted.variants)[:-2] == list(params.variants)
    assert promoted.variants["mlp-64-bn-drop20"] == VariantSpec.model_validate(study.trials[1].user_attrs["spec"])
    assert promoted.variants["mlp-64-bn-drop40"].dropout == 0.4
    entry = promoted.promoted["mlp-64-bn-drop20"]
    assert (entry.study, entry.trial, entry.seeds, entry.val_accuracy) == (params.search.study, 1, params.search.seeds, 0.99)
    assert "# From the search: study" in after

    # Promoted again: nothing added, the file as it was.
    assert promote(promoted, 2, root / "params.yaml") == [] and (root / "params.yaml").read_text() == after


def test_no_complete_trial_is_one_line_and_params_yaml_stays(workspace):
    root, params, study = workspace
    study.add_trial(trial(params, None, 0.3, TrialState.PRUNED))
    before = (root / "params.yaml").read_text()
    with pytest.raises(PipelineError, match=f"study {params.search.study} in .* has no complete trial yet: run `make search`"):
        promote(params, 3, root / "params.yaml")
    assert (root / "params.yaml").read_text() == before


def test_fewer_distinct_designs_than_asked_are_all_promoted_saying_why(workspace, capsys):
    root, params, study = workspace
    for made in (trial(params, 0.97, 0.1), trial(params, 0.99, 0.2), trial(params, 0.99, 0.2, name="mlp-64-bn-drop20-t2")):
        study.add_trial(made)

    assert promote(params, 3, root / "params.yaml") == ["mlp-64-bn-drop20", "mlp-64-bn-drop10"]
    assert "promote: 2 of the 3 asked: study mnist-mlp-search has 2 distinct designs among its 3 complete trials" in capsys.readouterr().out
