"""pipeline/search.py's settings: the search space validated with the rest of params.yaml, one
line per mistake. The search itself, run as `make search` runs it: tests/scenarios/test_search.py."""

import pytest

from pipeline.config import parse_params
from pipeline.errors import ParamsError
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
