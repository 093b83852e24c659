"""What users see, in a real browser: Debian's Chromium, headless, driven by Playwright, against
the quick run (conftest.quick_run) and the lean `mlflow ui` the README documents.

Screenshots go to a temporary directory; `make screenshots` sets SCREENSHOTS_DIR to docs/screenshots/,
where the README shows them, and runs these tests.
"""

import os
import re
import socket
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml
from playwright.sync_api import expect, sync_playwright

from tests.helpers import REPO_ROOT, dvc
from tests.servers import LEAN_UI_ENV, LEAN_UI_OPTIONS, ui_server

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# As root in a container: no sandbox; and none of Chromium's background calls to Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SLOW_PAGE_MS = 60_000  # the UI's first page on 2 busy cores


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    """Where the screenshots go: SCREENSHOTS_DIR (`make screenshots`: docs/screenshots/), or a temporary directory."""
    chosen = os.environ.get("SCREENSHOTS_DIR")
    directory = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: install Debian's `chromium` package (.ci/run does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(SLOW_PAGE_MS)
    yield page
    context.close()


@pytest.fixture(scope="module")
def ui(quick_run):
    """The UI's URL, and the links evaluate printed, pointed at it."""
    repo, output = quick_run
    printed = dict(re.findall(r"^  (experiment|compare|registry): (http\S+)$", output, re.MULTILINE))
    assert set(printed) == {"experiment", "compare", "registry"}, output[-3000:]
    with ui_server(f"sqlite:///{repo}/mlflow.db", cwd=repo) as url:
        yield url, {what: link.replace("http://127.0.0.1:5000", url, 1) for what, link in printed.items()}


def variants_and_champion(repo: Path) -> tuple[list[str], str]:
    variants = list(yaml.safe_load((repo / "params.yaml").read_text())["variants"])
    champion = yaml.safe_load((repo / "reports/metrics.json").read_text())["champion"]
    return variants, champion


def shoot(page, directory: Path, name: str) -> None:
    page.screenshot(path=directory / name)


def test_make_ui_starts_the_lean_ui_these_tests_use():
    recipe = (REPO_ROOT / "Makefile").read_text().split("\nui:", 1)[1].split("\n\n", 1)[0]
    for name, value in LEAN_UI_ENV.items():
        assert f"{name}={value} mlflow ui" in recipe
    assert " ".join(LEAN_UI_OPTIONS) in recipe


def test_make_ui_on_a_taken_port_fails_in_one_line_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(["make", "--no-print-directory", "ui", f"UI_PORT={port}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"make ui: port {port} is taken (a scoring server?): stop it, or choose another port: make ui UI_PORT=5002" in result.stderr.splitlines()
    assert "mlflow" not in result.stdout.lower()  # nothing started


def close_the_assistant(page) -> None:
    """MLflow 3's assistant panel opens beside every page; users close it, so do the screenshots."""
    page.get_by_role("button", name="Close", exact=True).click()


def test_the_experiment_page_lists_the_variants_with_test_accuracy_and_the_champion(page, ui, quick_run, screenshots):
    variants, champion = variants_and_champion(quick_run[0])
    page.goto(ui[1]["experiment"])
    expect(page.get_by_text(f"{len(variants)} matching runs")).to_be_visible()  # the variant runs, not their seeds
    for variant in variants:
        expect(page.get_by_role("link", name=variant, exact=True)).to_be_attached()
    for column in ("ensemble_val_accuracy", "ensemble_test_accuracy", "ensemble_test_ci_low", "champion"):
        expect(page.get_by_role("columnheader", name=column).first).to_be_visible()
    # The best seed ensemble on validation first: the champion's row, the one row whose champion cell says true.
    first_row = page.locator('[row-index="0"]')
    expect(first_row.get_by_role("link", name=champion, exact=True)).to_be_visible()
    expect(first_row.get_by_role("gridcell", name="true", exact=True)).to_be_visible()
    expect(page.get_by_role("gridcell", name="true", exact=True)).to_have_count(1)
    shoot(page, screenshots, "experiment.png")


def test_the_compare_link_opens_the_architecture_against_the_served_accuracy_with_no_clicks(page, ui, quick_run, screenshots):
    """The chart mode of the saved view, as the link opens it: the parallel coordinates of depth,
    width and dropout against the served ensembles' accuracy, drawn for every variant."""
    variants, _ = variants_and_champion(quick_run[0])
    page.goto(ui[1]["compare"])
    expect(page.get_by_text(f"{len(variants)} matching runs")).to_be_visible()
    chart = page.locator("[data-testid='experiment-view-compare-runs-chart-area']")
    expect(chart.get_by_text("Parallel Coordinates", exact=True)).to_be_visible()
    for axis in ("depth", "width", "dropout"):
        expect(chart.locator("svg text", has_text=re.compile(f"^{axis}$")).first).to_be_visible()
    expect(chart.get_by_text("train_seconds vs. ensemble_val_accuracy")).to_be_visible()
    shoot(page, screenshots, "compare.png")


def test_the_registry_shows_the_champion(page, ui, quick_run, screenshots):
    _, champion = variants_and_champion(quick_run[0])
    page.goto(ui[1]["registry"])
    expect(page.get_by_text("@champion at the variant whose seed ensemble, what is served, has the best validation accuracy", exact=False)).to_be_visible()
    aliased = page.get_by_role("row").filter(has_text="@\u00a0champion")  # the alias chip: "@", a no-break space, its name
    expect(aliased).to_have_count(1)
    expect(aliased).to_contain_text(f": {champion}")  # on the champion's version (its variant tag)
    shoot(page, screenshots, "registry.png")


def test_dvc_plots_draw_every_chart_with_no_network(page, quick_run, tmp_path, screenshots):
    repo, _ = quick_run
    variants, _ = variants_and_champion(repo)
    dvc("plots", "show", "--out", str(tmp_path / "dvc_plots"), cwd=repo)  # the quick run stays as it was
    requests, errors = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route(re.compile(r"^(?!file:).*"), lambda route: route.abort())  # nothing leaves the machine
    page.goto((tmp_path / "dvc_plots/index.html").as_uri())

    charts = page.locator(".vega-embed")
    # Validation accuracy, validation loss, training loss; the ensemble of the first k seeds on
    # validation and test; the champion's and the runner-up's confusion matrices.
    expect(charts).to_have_count(7)
    expect(page.locator(".vega-embed svg.marks")).to_have_count(7)  # each drawn by Vega
    images = 2 * len(variants) + 4  # per variant its violins and curves; the comparison; reliability, mistakes, disagreements
    drawn = "[...document.images].filter(image => image.complete && image.naturalWidth > 0).length"
    page.wait_for_function(f"{drawn} === {images}")
    assert errors == []
    assert [url for url in requests if not url.startswith("file:")] == []
    charts.first.screenshot(path=screenshots / "validation-accuracy.png")
    charts.nth(3).screenshot(path=screenshots / "ensemble-size.png")
    charts.nth(5).screenshot(path=screenshots / "confusion-champion.png")


def test_the_champions_run_page_shows_mlflows_confusion_matrix(page, ui, quick_run, screenshots):
    repo = quick_run[0]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-mlp")
    (run,) = client.search_runs([experiment.experiment_id], "tags.champion = 'true'")
    page.goto(f"{ui[0]}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/artifacts")
    page.get_by_text("confusion_matrix.png", exact=True).click()
    expect(page.get_by_role("img", name="confusion_matrix.png")).to_be_visible()
    page.wait_for_function("[...document.images].some(image => image.alt === 'confusion_matrix.png' && image.complete && image.naturalWidth > 0)")
    close_the_assistant(page)
    shoot(page, screenshots, "confusion-matrix-run.png")
