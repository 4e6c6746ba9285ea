"""MLflow bookkeeping: one experiment per study, a parent run per invocation, a child run per trial.

We talk to MLflow through an explicit `MlflowClient` with an explicit tracking URI (the library's
default depends on the working directory), and nest runs with the `mlflow.parentRunId` tag, which
is what `mlflow.start_run(parent_run_id=...)` sets. Per-epoch metrics go in one `log_batch` call.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from harness.errors import UserError
from harness.settings import Settings, redact

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its INFO lines about creating tables


class Tracker:
    def __init__(self, settings: Settings, experiment: str | None):
        """experiment None: a client only, for reading runs."""
        self.client = MlflowClient(tracking_uri=settings.tracking_uri)
        if experiment is None:
            return
        try:
            self.experiment_id = self._experiment(experiment, settings.artifact_root)
        except MlflowException as e:
            raise UserError(f"MLflow tracking at {redact(settings.tracking_uri)} failed: {e.message}") from None

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        location = (artifact_root / name).as_uri() if artifact_root else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another worker created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str],
                  parent_id: str | None = None) -> str:
        tags = {k: str(v) for k, v in tags.items()} | ({MLFLOW_PARENT_RUN_ID: parent_id} if parent_id else {})  # REST wants str
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

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, folder: Path) -> None:
        self.client.log_artifacts(run_id, str(folder))

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def end_run(self, run_id: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
        """Close a run; status is FINISHED, FAILED or KILLED."""
        if tags:
            self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status)
