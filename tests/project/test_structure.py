"""The package's shape, checked against its source: imports point one way, dvc.yaml lists for
each stage exactly the package files it runs, and the served model ships exactly what it imports."""

import ast
import graphlib
import importlib.metadata
import re
import subprocess
import sys

import yaml

from pipeline import registry

from tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "pipeline"
KERAS_BACKEND = "tensorflow"  # imported by Keras, not by our files


def package_imports(module: str) -> set[str]:
    """The modules of pipeline/ that pipeline/MODULE.py imports itself (`from pipeline import x`,
    `from pipeline.x import y`, `import pipeline.x`)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            found |= {alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").is_file()}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("pipeline.")}
    return found


def third_party_imports(module: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "pipeline"}


def files_run_by(module: str) -> set[str]:
    """pipeline/MODULE.py, every package file it imports directly or through another, and __init__.py."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += package_imports(current)
    return {"__init__.py", *(f"{name}.py" for name in seen)}


def all_modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, a foreach stage by its `do` template."""
    return {name: stage.get("do", stage) for name, stage in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"].items()}


def stage_module(stage: dict) -> str:
    return re.fullmatch(r"python -m pipeline\.(\w+)( .*)?", stage["cmd"]).group(1)


# Commands that are not DVC stages: `make search` runs them (docs/search.md).
SEARCH_COMMANDS = {"search", "promote"}


def test_the_import_graph_has_no_cycle_and_no_command_imports_a_command():
    graph = {module: package_imports(module) for module in all_modules()}
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert set(order) == set(graph)
    stage_modules = {stage_module(stage) for stage in stages().values()}
    assert stage_modules == {"validate", "download", "preprocess", "train", "evaluate", "register"}
    commands = stage_modules | SEARCH_COMMANDS
    importers = {module: sorted(m for m, imports in graph.items() if module in imports) for module in commands}
    assert importers == {module: [] for module in commands}


def test_no_stage_runs_or_reads_the_search():
    """The search runs only when asked: no stage imports its code or lists its section."""
    for name, stage in stages().items():
        run = files_run_by(stage_module(stage))
        assert not run & {"search.py", "promote.py", "studies.py"}, name
        assert not any(str(param).startswith("search") for param in stage.get("params", [])), name


def test_every_stage_depends_on_exactly_the_package_files_it_runs():
    for name, stage in stages().items():
        expected = files_run_by(stage_module(stage))
        if "registry.py" in expected:  # it registers models: their code is the stage's too
            expected |= set(registry.SERVED_FILES)
        listed = {dep.removeprefix("pipeline/") for dep in stage["deps"] if dep.startswith("pipeline/")}
        assert {"missing": expected - listed, "not run": listed - expected} == {"missing": set(), "not run": set()}, name


def test_every_stage_runs_after_validate():
    """DVC removes a stage's outputs just before its command: validate must fail first on a bad params.yaml."""
    for name, stage in stages().items():
        if name != "validate":
            assert "data/params.valid" in stage["deps"], name
    assert stages()["validate"]["outs"] == ["data/params.valid"] and "params.yaml" in stages()["validate"]["deps"]


def test_no_stage_lists_the_speed_section_as_a_param():
    for name, stage in stages().items():
        assert not any(str(param).startswith("speed") for param in stage.get("params", [])), name


def test_the_served_model_ships_exactly_the_files_serving_runs():
    assert registry.SERVING_MODULE == "serving.py"
    assert set(registry.SERVED_FILES) == files_run_by("serving")


def distribution(import_name: str) -> str:
    candidates = importlib.metadata.packages_distributions()[import_name]
    normalized = {re.sub(r"[-_.]+", "-", name).lower() for name in candidates}
    return import_name if import_name in normalized else normalized.pop()


def test_the_served_model_pins_exactly_the_distributions_its_files_import():
    imported = set().union(*(third_party_imports(name.removesuffix(".py")) for name in registry.SERVED_FILES))
    assert imported == {"mlflow", "numpy", "pandas", "keras"}
    expected = {distribution(name) for name in imported | {KERAS_BACKEND}}
    pinned = {re.sub(r"[-_.]+", "-", pin.split("==")[0]).lower() for pin in registry.serving_requirements()}
    assert pinned == expected


def test_the_data_and_ensemble_modules_need_numpy_only():
    assert third_party_imports("data") == third_party_imports("ensemble") == {"numpy"}
    assert third_party_imports("errors") == set()


def test_importing_training_and_tracking_code_never_runs_the_serving_entry_point():
    code = "import sys, pipeline.train, pipeline.evaluate, pipeline.tracking; print('pipeline.serving' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_test_modules_never_import_each_other():
    """Shared test code lives in tests/helpers.py, tests/servers.py and the conftest.py files."""
    tests = REPO_ROOT / "tests"
    modules = {path.stem for path in tests.rglob("test_*.py")}
    offenders = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO_ROOT)}: {name}" for name in names if name.split(".")[-1] in modules | {"conftest"}]
    assert offenders == []


def test_every_pipeline_module_with_unit_tests_has_them_under_its_own_name():
    """A reader finds a module's unit tests by its name: tests/unit/test_MODULE.py tests pipeline/MODULE.py."""
    unit = {path.stem.removeprefix("test_") for path in (REPO_ROOT / "tests/unit").glob("test_*.py")}
    assert unit <= set(all_modules()), unit - set(all_modules())


def test_no_output_dvc_caches_is_tracked_by_git():
    """DVC refuses to write a cached output git tracks ("already tracked by SCM") in a fresh clone,
    which the tests' own copies (committed afresh, .gitignore applied) would not show."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    cached = []
    for stage in stages().values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                if options.get("cache", True):
                    cached += [path.replace("${key}", variant) for variant in params["variants"]] if "${key}" in path else [path]
    tracked = subprocess.run(["git", "ls-files", "--", *cached], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert tracked == [], f"cached by DVC, yet tracked by git (git rm -r --cached them): {tracked[:5]}"
