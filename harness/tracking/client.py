"""MLflow through a client bound to the store: one experiment per study, runs written in batches, and
runs read back as a table.

Runs nest with the `mlflow.parentRunId` tag, which is what `mlflow.start_run(parent_run_id=...)`
sets. Metrics of one step go in one `log_batch` call, and so do the points of a per-step curve that
one round adds (chunked at MLflow's 1000 metrics a call). Reading uses the same bound client (never
`mlflow.search_runs`, which follows the global tracking URI), so the report and `confirm` read the
store the study wrote, whatever the working directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from harness.core.errors import UserError, redact, redact_text
from harness.core.keys import Tag
from harness.core.storage import Storage

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
PAGE = 10_000  # runs per search request
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit on the metrics of one log_batch
# The experiment tag MLflow 3's UI writes when a user picks an experiment's kind ("Machine learning" here,
# against "GenAI apps & agents"); UIs that choose the view per experiment open the classic runs view for
# it. MLflow 3.17 chooses the view from the workflowType URL parameter instead (harness/tracking/ui.py).
EXPERIMENT_KIND = "mlflow.experimentKind"
ML_EXPERIMENT = {EXPERIMENT_KIND: "custom_model_development"}


class Tracker:
    """Writes runs of one experiment (the study's), through a client bound to the store."""

    def __init__(self, storage: Storage, experiment: str):
        self.client = storage.mlflow()
        try:
            self.experiment_id = self._experiment(experiment, storage.artifact_location(experiment))
        except MlflowException as e:
            raise UserError(f"MLflow tracking at {redact(storage.tracking_uri)} failed: "
                            f"{redact_text(e.message, storage.tracking_uri)}") from None

    def _experiment(self, name: str, location: str | None) -> str:
        """The study's experiment, created or reopened as a machine-learning one (EXPERIMENT_KIND)."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=location, tags=ML_EXPERIMENT)
            except MlflowException:  # another worker created it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        if EXPERIMENT_KIND not in found.tags:  # created before the tag; a kind a user chose in the UI stays
            self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, ML_EXPERIMENT[EXPERIMENT_KIND])
        return found.experiment_id

    def start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any],
                  parent_id: str | None = None) -> str:
        tags = {k: str(v) for k, v in tags.items()} | ({Tag.PARENT: parent_id} if parent_id else {})  # REST wants str
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_points(self, run_id: str, points: Sequence[Mapping[str, float]], step_key: str) -> None:
        """Metrics at several steps (each point's step is its `step_key` value, not logged itself), in as
        few log_batch calls as MLflow allows: one for a round of a per-step curve."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(point[step_key])) for point in points for k, v in point.items()
                 if k != step_key]
        for start in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[start:start + MAX_METRICS_PER_BATCH])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def end_run(self, run_id: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
        """Close a run; status is FINISHED, FAILED or KILLED."""
        if tags:
            self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status)


def runs_frame(client: MlflowClient, experiment: str, filter_string: str = "") -> pd.DataFrame:
    """Every run of an experiment as one row: run_id, status, start_time, run_name, params.*,
    metrics.* (the last value) and tags.*; empty when the experiment does not exist."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame()
    rows, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], filter_string, max_results=PAGE, page_token=token)
        for run in page:
            rows.append({"run_id": run.info.run_id, "status": run.info.status, "run_name": run.info.run_name,
                         "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
                         **{f"params.{k}": v for k, v in run.data.params.items()},
                         **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
                         **{f"tags.{k}": v for k, v in run.data.tags.items()}})
        token = page.token
        if not token:
            return pd.DataFrame(rows)
