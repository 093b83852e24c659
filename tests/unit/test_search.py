"""pipeline/search.py's settings: the search space validated with the rest of params.yaml, one
line per mistake; its sampler, on a real Optuna storage. The search itself, run as `make search`
runs it: tests/scenarios/test_search.py."""

import optuna
import pandas as pd
import pytest

from pipeline.config import parse_params
from pipeline.errors import ParamsError
from pipeline.search import (
    LINEAR_DECAY_FRACTION, RECIPES, TrialSeededSampler, accuracy_cost_front, design_name, recipe_trial, start_from_recipes, tenths_done,
)
from tests.helpers import with_value


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("search.space.batch_size", [], "search.space.batch_size: an empty choice: list one value at least"),
        ("search.space.dropout", [0.5, 0.1], "search.space.dropout: low 0.5 is above high 0.1: write [low, high]"),
        ("search.space.learning_rate", [0.0, 0.01], "search.space.learning_rate: a log-scale range must stay above zero (got [0.0, 0.01])"),
        ("search.space.width", [48, 1024], "search.space.width: widths are powers of two from 32 to 2048 (got [48, 1024])"),
        ("search.space.initializer", ["random_normal"], "search.space.initializer[0]: Input should be 'glorot_uniform'"),
        ("search.seeds", [4, 100], "search.seeds: [4] also in train.seeds"),
        ("search.space.depht", [1, 2], "search.space.depht: unknown key; did you mean depth?"),
        ("promoted", {"mlp-x": {"study": "s", "trial": 0, "seeds": [100], "val_accuracy": 0.9}}, "promoted.mlp-x: no variant of that name"),
    ],
)
def test_a_bad_search_setting_is_one_line_naming_it(key, value, says):
    with pytest.raises(ParamsError) as caught:
        parse_params(with_value(key, value))
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and lines[1].strip().startswith(says), lines


def draws(study, asked: int) -> list[dict]:
    """The parameters of `asked` trials asked of `study` (left running, as workers' trials are)."""
    return [study.ask({"x": optuna.distributions.FloatDistribution(0, 1), "n": optuna.distributions.IntDistribution(0, 1000)}).params
            for _ in range(asked)]


def test_workers_started_together_draw_different_designs_and_one_alone_draws_the_same_each_run(tmp_path):
    """Two workers with the same sampler_seed on one study, their trials interleaved as when they
    start together: four trials, four designs (TPE seeded per worker draws each design twice). One
    worker alone draws again, on a new study, exactly what it drew before."""
    storage = f"sqlite:///{tmp_path}/study.db"

    def worker(name: str, seed: int = 0) -> optuna.Study:
        return optuna.create_study(study_name=name, storage=storage, sampler=TrialSeededSampler(seed, random_trials=10), load_if_exists=True)

    first, second = worker("together"), worker("together")
    together = [design for _ in range(2) for study in (first, second) for design in draws(study, 1)]
    assert len({tuple(sorted(design.items())) for design in together}) == 4

    # The failure this prevents, with Optuna's own sampler seeded alike in each worker.
    plain = [optuna.create_study(study_name="plain", storage=storage, sampler=optuna.samplers.TPESampler(seed=0), load_if_exists=True)
             for _ in range(2)]
    assert draws(plain[0], 1) == draws(plain[1], 1)

    assert draws(worker("alone-1"), 4) == draws(worker("alone-2"), 4)
    assert draws(worker("alone-3"), 4) != draws(worker("other-seed", seed=1), 4)


def test_the_accuracy_cost_front_keeps_the_trials_none_beats_on_both_counts():
    """Hand-worked: b is dominated by a (slower, worse), d by c (slower, equal), the pruned and
    unscored ones are no candidates; the front a, c, e: each better than every faster one."""
    trials = pd.DataFrame({
        "variant": ["a", "b", "c", "d", "e", "f", "g"],
        "state": ["complete"] * 5 + ["pruned", "complete"],
        "train_seconds": [10.0, 20.0, 30.0, 40.0, 90.0, 5.0, None],
        "val_accuracy": [0.95, 0.94, 0.97, 0.97, 0.98, 0.99, 0.999],
    })
    assert accuracy_cost_front(trials)["variant"].tolist() == ["a", "c", "e"]


def test_the_published_recipes_start_the_study_fitted_to_its_space(default_params, tmp_path):
    """Rasmus et al.'s baseline as the default space holds it (widths to powers of two, epochs the
    space's longest, linear decay over the last third), queued once however often a worker starts;
    a space too shallow for it leaves it out, saying why."""
    space = default_params.search.space
    params, _ = recipe_trial(RECIPES["rasmus-2015"], space)
    assert params == {
        "depth": 5, "log2_width_1": 10, "log2_width_2": 9, "log2_width_3": 8, "log2_width_4": 8, "log2_width_5": 8,
        "batch_norm": True, "dropout": 0.0, "input_dropout": 0.0, "max_norm": None, "learning_rate": 0.002, "batch_size": 100,
        "initializer": "glorot_uniform", "input_noise": 0.3, "hidden_noise": 0.3, "lr_schedule": "linear", "epochs": space.epochs[1],
        "vat_epsilon": 0.0,
    }
    assert LINEAR_DECAY_FRACTION * 150 == 50  # the paper's last 50 of 150 epochs
    shallow = space.model_copy(update={"depth": [1, 3]})
    assert recipe_trial(RECIPES["rasmus-2015"], shallow) == (None, "5 hidden layers, outside search.space.depth [1, 3]")

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/study.db", direction="maximize")
    for _ in range(2):  # a second worker starting
        start_from_recipes(study, default_params.search)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [trial.user_attrs["recipe"] for trial in waiting] == ["rasmus-2015", "srivastava-2014"]


def test_a_design_name_reads_as_its_design_within_63_characters(default_params):
    spec = default_params.variants["mlp-256-64"].model_copy(update={
        "hidden_layers": [1024, 512, 256, 256, 256], "batch_norm": True, "input_noise": 0.3, "hidden_noise": 0.3, "lr_schedule": "linear"})
    assert design_name(spec, 0) == "mlp-1024-512-256x3-bn-n30-hn30-lin-t0"
    widest = spec.model_copy(update={"hidden_layers": [2048, 1024, 2048, 1024, 2048], "dropout": 0.5, "input_dropout": 0.3,
                                     "max_norm": 3.5, "lr_schedule": "cosine"})
    assert design_name(widest, 1234) == "mlp-2048-1024-2048-1024-2048-bn-drop50-in30-norm3p5-n30-t1234"  # hn30, cos cut
    vat = spec.model_copy(update={"hidden_layers": [1024, 512, 256, 128], "input_noise": 0.0, "hidden_noise": 0.0,
                                  "lr_schedule": "cosine", "vat_epsilon": 2.1})
    assert design_name(vat, 3) == "mlp-1024-512-256-128-bn-cos-vat2p1-t3"


@pytest.mark.parametrize("epoch, epochs, tenths", [(1, 2, 5), (2, 2, 10), (1, 3, 3), (2, 3, 6), (3, 3, 10), (14, 150, 0), (15, 150, 1), (150, 150, 10)])
def test_the_pruner_compares_trials_at_the_same_tenth_of_their_own_epochs(epoch, epochs, tenths):
    assert tenths_done(epoch, epochs) == tenths
