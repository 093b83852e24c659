import json
import subprocess
import sys

import pytest
import yaml

from pipeline.config import load_params, parse_params
from pipeline.errors import ParamsError

from tests.helpers import REPO_ROOT, copy_of_repository, default_raw, with_value


def test_the_shipped_params_are_valid():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.data.test_size == 0.175
    assert params.data.random_state == 0
    assert params.data.subset == 0
    assert params.train.max_epochs == 0
    assert params.train.seeds == [0, 1, 2, 3, 4]
    assert params.download.sources == ["url", "wheel", "file"]


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("data.subset", -5, "greater than or equal to 0"),
        ("data.subset", 60_001, "less than or equal to 60000"),
        ("data.subset", "100", "valid integer"),
        ("data.subset", 2.5, "valid integer"),
        ("data.test_size", 0, "greater than 0"),
        ("data.test_size", 1.0, "less than 1"),
        ("data.test_size", "0.2", "valid number"),
        ("data.random_state", -1, "greater than or equal to 0"),
        ("train.max_epochs", "abc", "valid integer"),
        ("train.max_epochs", -1, "greater than or equal to 0"),
        ("train.max_epochs", True, "valid integer"),
        ("train.seeds", [], "at least 1 item"),
        ("train.seeds", [0, -1], "[1]: Input should be greater than or equal to 0 (got -1)"),
        ("train.seeds", [0, 1_000_001], "[1]: Input should be less than or equal to 1000000 (got 1000001)"),
        ("train.seeds", [0, "1"], "[1]: Input should be a valid integer (got '1')"),
        ("download.sources", ["url", "ftp"], "[1]: Input should be 'url', 'wheel' or 'file' (got 'ftp')"),
        ("download.sources", [], "at least 1 item"),
        ("download.url", "storage.example/mnist.npz", "should match pattern"),
        ("download.timeout_seconds", 0, "greater than 0"),
        # Bounds the code can honour: beyond them a crash, or hours of swapping, without them.
        ("train.seeds", [2**70], "[0]: Input should be less than or equal to 1000000"),
        ("data.random_state", 2**32, "less than or equal to 4294967295"),
        ("train.epochs", 10**9, "less than or equal to 10000"),
        ("train.max_epochs", 10_001, "less than or equal to 10000"),
        ("train.batch_size", 10**6, "less than or equal to 60000"),
        ("train.learning_rate", float("inf"), "finite number"),
        ("train.learning_rate", float("nan"), "finite number"),
        ("train.learning_rate", 1e4, "less than or equal to 1000"),
        ("train.dropout", float("nan"), "finite number"),
        ("train.init_stddev", [0.1, float("inf")], "[1]: Input should be a finite number"),
        ("speed.steps_per_execution", 10**6, "less than or equal to 10000"),
        ("speed.validation_batch_size", 10**6, "less than or equal to 65536"),
    ],
)
def test_an_invalid_value_is_named_with_what_is_allowed(key, value, allowed):
    with pytest.raises(ParamsError) as caught:
        parse_params(with_value(key, value))
    message = str(caught.value)
    assert f"  {key}" in message
    assert allowed in message
    assert repr(value if not isinstance(value, list) or not value else value[-1]) in message


@pytest.mark.parametrize("key", ["data.subsett", "trainning", "download.mirror"])
def test_an_unknown_key_is_named(key):
    with pytest.raises(ParamsError, match=f"{key}: unknown key"):
        parse_params(with_value(key, 1))


def test_a_missing_section_is_named():
    raw = default_raw()
    del raw["train"]
    with pytest.raises(ParamsError, match="train: Field required"):
        parse_params(raw)


def test_every_bad_key_is_reported_at_once():
    raw = with_value("data.subset", -1)
    raw["train"]["max_epochs"] = "x"
    message = str(pytest.raises(ParamsError, parse_params, raw).value)
    assert "data.subset" in message and "train.max_epochs" in message


def test_unreadable_params_files_are_reported(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("data: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("stage", ["download", "preprocess"])
def test_a_stage_stops_before_any_work_on_bad_params(stage, tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("data.subset", -5)))
    result = subprocess.run(
        [sys.executable, "-m", f"pipeline.{stage}"],
        cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "data.subset: Input should be greater than or equal to 0 (got -5)" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


@pytest.mark.parametrize(
    "change, key, says",
    [
        ({"dropout": 1.0}, "dropout", "less than 1"),
        ({"dropout": -0.1}, "dropout", "greater than or equal to 0"),
        ({"hidden_layers": []}, "hidden_layers", "at least 1 item"),
        ({"hidden_layers": [256, -64]}, "hidden_layers[1]", "greater than 0"),
        ({"hidden_layers": [256, 64.5]}, "hidden_layers[1]", "valid integer"),
        ({"optimizer": "adamw"}, "optimizer", "'adam', 'sgd' or 'rmsprop'"),
        ({"activation": "swish"}, "activation", "Input should be 'relu'"),
        ({"initializer": "zeros"}, "initializer", "Input should be 'random_normal'"),
        ({"batch_size": 0}, "batch_size", "greater than 0"),
        ({"epochs": 0}, "epochs", "greater than 0"),
        ({"learning_rate": 0}, "learning_rate", "greater than 0"),
        ({"initializer": "he_normal"}, "", "init_stddev (first hidden layer, later hidden layers) is required"),
        ({"init_stddev": [0.1]}, "init_stddev", "at least 2 items"),
        ({"hidden_units": [10]}, "hidden_units", "unknown key"),
        ({"hidden_layers": [10**6]}, "hidden_layers[0]", "less than or equal to 8192"),
        ({"hidden_layers": [8] * 21}, "hidden_layers", "at most 20 items"),
        ({"batch_size": 10**6}, "batch_size", "less than or equal to 60000"),
        ({"epochs": 10**9}, "epochs", "less than or equal to 10000"),
        ({"input_noise": -0.1}, "input_noise", "greater than or equal to 0"),
        ({"hidden_noise": 3.0}, "hidden_noise", "less than or equal to 2"),
        ({"lr_schedule": "step"}, "lr_schedule", "Input should be 'constant', 'linear' or 'cosine'"),
        ({"decay_fraction": 0}, "decay_fraction", "greater than 0"),
        ({"vat_epsilon": 30.0}, "vat_epsilon", "less than or equal to 28"),
        # Within every per-key bound, but five replicates of it would not fit this machine.
        ({"hidden_layers": [8192, 8192, 8192]}, "", "5 replicates of 140,746,762 parameters at batch 128 need about 10.7 GiB, more than the 8 GiB allowed"),
    ],
)
def test_a_bad_variant_is_named_down_to_the_key(change, key, says):
    raw = default_raw()
    raw["variants"]["mlp-256-64"].update(change)
    message = str(pytest.raises(ParamsError, parse_params, raw).value)
    assert f"  variants.mlp-256-64{'.' + key if key else ''}: " in message
    assert says in message


def test_a_bad_shared_setting_is_named_where_it_is_written():
    raw = with_value("train.batch_size", 0)
    message = str(pytest.raises(ParamsError, parse_params, raw).value)
    assert "  train.batch_size: Input should be greater than 0" in message


@pytest.mark.parametrize("name", ["mlp.256", "MLP", "latest", "v3", "champion", "a b"])
def test_a_variant_name_that_would_break_dvc_or_mlflow_is_refused(name):
    raw = default_raw()
    raw["variants"][name] = raw["variants"].pop("mlp-256-64")
    with pytest.raises(ParamsError, match=f"variants.{name}"):
        parse_params(raw)


def test_repeated_seeds_are_refused():
    with pytest.raises(ParamsError, match=r"train: seeds must be distinct \(got \[0, 1, 0\]\)"):
        parse_params(with_value("train.seeds", [0, 1, 0]))


def test_a_shared_setting_written_wrong_once_is_one_line():
    message = str(pytest.raises(ParamsError, parse_params, with_value("train.learning_rate", "abc")).value)
    assert message.splitlines() == ["params.yaml is invalid:", "  train.learning_rate: Input should be a valid number (got 'abc')"]


def test_an_unknown_key_says_what_was_meant_and_what_is_allowed():
    raw = default_raw()
    raw["variants"]["mlp-256-64"]["drpout"] = 0.5
    message = str(pytest.raises(ParamsError, parse_params, raw).value)
    assert message.splitlines()[1] == (
        "  variants.mlp-256-64.drpout: unknown key; did you mean dropout? Allowed here: batch_norm, dropout, activation, "
        "initializer, init_stddev, output_initializer, optimizer, learning_rate, batch_size, epochs, jit_compile, input_dropout, "
        "max_norm, input_noise, hidden_noise, lr_schedule, decay_fraction, vat_epsilon, hidden_layers"
    )


def test_a_bad_variant_name_says_the_rule():
    raw = default_raw()
    raw["variants"]["mlp 1"] = raw["variants"]["mlp-256-64"]
    message = str(pytest.raises(ParamsError, parse_params, raw).value)
    assert "  variants.mlp 1: a variant's name is 1-63 lowercase letters, digits and hyphens" in message
    assert message.count("\n") == 1


# How people write these numbers; YAML 1.1 (PyYAML) reads the first, third and fourth as strings.
SPELLINGS = {"mlp-256-64": "5e-4", "mlp-256-64-bn": "1.0e-3", "mlp-256-64-bn-dropout": "1E-3", "mlp-512-256-128": "+2.5e-4"}


def test_the_stages_read_params_yaml_as_dvc_does(tmp_path):
    """YAML 1.2, as DVC's ruamel.yaml reads it: `1e-3` is a number everywhere. What the stages read is
    compared with what DVC itself reports (dvc.api.params_show) for the same file."""
    repo = copy_of_repository(tmp_path)
    text = (repo / "params.yaml").read_text()
    assert text.count("  learning_rate: 0.001\n") == 1
    text = text.replace("  learning_rate: 0.001\n", "  learning_rate: 1e-3\n")
    for name, spelling in SPELLINGS.items():
        assert text.count(f"\n  {name}:\n") == 1
        text = text.replace(f"\n  {name}:\n", f"\n  {name}:\n    learning_rate: {spelling}\n")
    text = text.replace("\n  mlp-256-64:\n", "\n  mlp-256-64:\n    init_stddev: [6.2e-2, 1.25E-1]\n")
    (repo / "params.yaml").write_text(text)
    assert yaml.safe_load(text)["train"]["learning_rate"] == "1e-3"  # what PyYAML would have made of it

    ours = load_params(repo / "params.yaml").model_dump()
    shown = subprocess.run(
        [sys.executable, "-c", "import json, dvc.api; print(json.dumps(dvc.api.params_show()))"],
        cwd=repo, capture_output=True, text=True, check=True,
    )
    theirs = json.loads(shown.stdout)
    assert ours["train"]["learning_rate"] == theirs["train"]["learning_rate"] == 0.001
    for name in SPELLINGS:
        assert ours["variants"][name]["learning_rate"] == theirs["variants"][name]["learning_rate"], name
    assert ours["variants"]["mlp-256-64"]["init_stddev"] == theirs["variants"]["mlp-256-64"]["init_stddev"]
    assert [ours["variants"][name]["learning_rate"] for name in SPELLINGS] == [0.0005, 0.001, 0.001, 0.00025]
    assert ours["variants"]["mlp-256-64"]["init_stddev"] == [0.062, 0.125]


def test_a_key_written_twice_is_refused(tmp_path):
    text = (REPO_ROOT / "params.yaml").read_text()
    lines = text.splitlines()
    (first,) = [number for number, line in enumerate(lines, 1) if line.startswith("  subset: 0 ")]
    (tmp_path / "params.yaml").write_text(text.replace("  subset: 0 ", "  subset: 0\n  subset: 5 "))
    # The duplicate is the line after the original, indented two spaces (column 3).
    with pytest.raises(ParamsError, match=rf'not valid YAML at line {first + 1}, column 3: found duplicate key "subset" with value "5" \(original value: "0"\)\Z'):
        load_params(tmp_path / "params.yaml")
