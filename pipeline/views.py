"""What the MLflow UI opens on: the experiment's saved view of the compared runs, and the links
evaluate prints.
"""

from __future__ import annotations

import json

import mlflow

from pipeline.errors import without_credentials
from pipeline.registry import REGISTERED_MODEL
from pipeline.tracking import CHAMPION_TAG, COMPARISON_TAG, EXPERIMENT

# The columns of the experiment's comparison view (the runs table shows each metric's last value).
VIEW_PARAMS = ["hidden_layers"]
VIEW_METRICS = ["ensemble_val_accuracy", "ensemble_test_accuracy", "ensemble_test_ci_low", "ensemble_test_ci_high", "test_accuracy_mean"]
# Its charts (the UI's chart mode, `compareRunsMode=CHART`), first and alone in their section: the
# architecture against the served ensemble's accuracy, and that accuracy against training time.
ANSWER_SECTION = "comparison-answer"
ARCHITECTURE_PARAMS = ["depth", "width", "dropout"]
ANSWER_METRICS = ["ensemble_val_accuracy", "ensemble_test_accuracy"]


def chart_cards() -> tuple[list[dict], list[dict]]:
    """The saved view's charts and their section, in the fields MLflow's UI keeps for them."""
    common = {"runsCountToCompare": 100, "metricSectionId": ANSWER_SECTION, "deleted": False, "isGenerated": False}
    charts = [
        {**common, "uuid": "architecture-against-accuracy", "type": "PARALLEL", "showAllRuns": True,
         "displayName": "Architecture against the served ensemble's accuracy",
         "selectedParams": ARCHITECTURE_PARAMS, "selectedMetrics": ANSWER_METRICS},
        {**common, "uuid": "accuracy-against-time", "type": "SCATTER", "displayName": "Served ensemble's validation accuracy against training time",
         "xaxis": {"key": "train_seconds", "type": "METRIC"}, "yaxis": {"key": "ensemble_val_accuracy", "type": "METRIC"}},
    ]
    # One card a row (the UI's default, three, leaves the parallel axes' names overlapping).
    sections = [{"uuid": ANSWER_SECTION, "name": "The comparison", "display": True, "isReordered": False, "deleted": False,
                 "isGenerated": False, "columns": 1, "cardHeight": 420}]
    return charts, sections


def ui_links() -> dict[str, str]:
    """Where the MLflow UI shows the comparison: the experiment's saved view in Model-training
    mode, as a table and as its charts, and the registered model. For `mlflow ui` on its default address,
    or the tracking server's own (never its credentials)."""
    uri = mlflow.get_tracking_uri()
    base = without_credentials(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    experiment_id = mlflow.MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id
    view = f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={COMPARISON_TAG}&workflowType=machine_learning"
    return {"experiment": view, "compare": f"{view}&compareRunsMode=CHART", "registry": f"{base}/#/models/{REGISTERED_MODEL}"}


def save_comparison_view(evaluation: str) -> None:
    """A view the UI opens by name (`?viewStateShareKey=comparison`): the runs evaluate run
    `evaluation` compared, best first, with their results."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    view = {
        "searchFilter": f"tags.{COMPARISON_TAG} = '{evaluation}'",
        "orderByKey": "metrics.`ensemble_val_accuracy`",
        "orderByAsc": False,
        "selectedColumns": [*(f"params.`{name}`" for name in VIEW_PARAMS), *(f"metrics.`{name}`" for name in VIEW_METRICS), f"tags.`{CHAMPION_TAG}`"],
    }
    view["compareRunCharts"], view["compareRunSections"] = chart_cards()
    view["runsHiddenMode"] = "SHOW_ALL"  # the UI charts its first 10 runs by default: the comparison has more
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{COMPARISON_TAG}", json.dumps(view))
