"""What the MLflow UI opens on: the experiment's saved view of the compared runs, and the links
evaluate prints.
"""

from __future__ import annotations

import json
import urllib.parse

import mlflow

from pipeline.errors import without_credentials
from pipeline.registry import REGISTERED_MODEL
from pipeline.tracking import CHAMPION_TAG, COMPARISON_TAG, EXPERIMENT

# The columns of the experiment's comparison view (the runs table shows each metric's last value).
VIEW_PARAMS = ["hidden_layers"]
VIEW_METRICS = ["ensemble_val_accuracy", "ensemble_test_accuracy", "ensemble_test_ci_low", "ensemble_test_ci_high", "test_accuracy_mean"]


def ui_links(run_ids: list[str]) -> dict[str, str]:
    """Where the MLflow UI shows the comparison: the experiment in Model-training mode, the
    compare view of `run_ids`, the registered model. For `mlflow ui` on its default address,
    or the tracking server's own (never its credentials)."""
    uri = mlflow.get_tracking_uri()
    base = without_credentials(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    experiment_id = mlflow.MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id
    compare = urllib.parse.urlencode({"runs": json.dumps(run_ids, separators=(",", ":")), "experiments": json.dumps([experiment_id])})
    return {
        "experiment": f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={COMPARISON_TAG}&workflowType=machine_learning",
        "compare": f"{base}/#/compare-runs?{compare}",
        "registry": f"{base}/#/models/{REGISTERED_MODEL}",
    }


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
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{COMPARISON_TAG}", json.dumps(view))
