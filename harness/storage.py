"""RUNS_DIR and everything under it: the one module that builds a path or a URI there.

  RUNS_DIR/mlflow.db             MLflow backend store   (TRACKING_URI overrides, e.g. http://host:5000)
  RUNS_DIR/artifacts/<exp>/      MLflow artifacts, one folder per experiment, then per run
  RUNS_DIR/optuna.db             Optuna storage         (STORAGE overrides, e.g. postgresql://...)
  RUNS_DIR/cache/                decoded datasets; extractors/, reference/ and panel/ below it
  RUNS_DIR/bench/, data-check/, latent/<run id>/, validation/   what `make bench`, `data-check`,
                                 `latent` and `validate-scores` write
The MLflow client is always bound to the store explicitly (MLflow's default URI depends on the
working directory), and the Optuna tables are created here, once, before any worker touches them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import optuna
from mlflow import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from harness.errors import UserError, redact, redact_text


@dataclass(frozen=True)
class Storage:
    runs_dir: Path
    storage_url: str  # Optuna
    tracking_uri: str  # MLflow
    artifact_root: Path | None  # None when a tracking server decides where artifacts go
    heartbeat_seconds: int = 30  # trials beat this often; silent for 3 beats = their worker is gone

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Storage":
        runs_dir = Path(environ.get("RUNS_DIR") or "mlruns").expanduser().resolve()
        tracking_uri = environ.get("TRACKING_URI") or f"sqlite:///{runs_dir / 'mlflow.db'}"
        local = urlsplit(tracking_uri).scheme in ("sqlite", "file", "")
        heartbeat = environ.get("HEARTBEAT_SECONDS") or "30"
        if not heartbeat.isdigit() or int(heartbeat) < 1:
            raise UserError(f"HEARTBEAT_SECONDS={heartbeat} must be a whole number of seconds >= 1")
        return cls(runs_dir=runs_dir,
                   storage_url=environ.get("STORAGE") or f"sqlite:///{runs_dir / 'optuna.db'}",
                   tracking_uri=tracking_uri,
                   artifact_root=runs_dir / "artifacts" if local else None,
                   heartbeat_seconds=int(heartbeat))

    def prepare(self) -> None:
        """Create RUNS_DIR and prove it is writable before anything is recorded there."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.runs_dir, prefix=".write-check-"):
                pass
        except OSError as e:
            raise UserError(f"RUNS_DIR {self.runs_dir} is not writable ({e.strerror}); "
                            "set RUNS_DIR= to a folder you can write") from None

    # ---- folders ------------------------------------------------------------------------------------

    @property
    def cache_dir(self) -> Path:
        """Decoded datasets (`<dataset>-<key>.pt`), keyed by the source's content and the options."""
        return self.runs_dir / "cache"

    @property
    def extractor_cache(self) -> Path:
        return self.cache_dir / "extractors"

    @property
    def reference_cache(self) -> Path:
        return self.cache_dir / "reference"

    @property
    def panel_cache(self) -> Path:
        """Validation panel results per (extractor weights, dataset, n): harness/panel.py."""
        return self.cache_dir / "panel"

    @property
    def validation_dir(self) -> Path:
        return self.runs_dir / "validation"

    @property
    def bench_dir(self) -> Path:
        return self.runs_dir / "bench"

    @property
    def data_check_dir(self) -> Path:
        return self.runs_dir / "data-check"

    def latent_dir(self, run_id: str) -> Path:
        return self.runs_dir / "latent" / run_id

    # ---- MLflow -------------------------------------------------------------------------------------

    @property
    def local_backend_uri(self) -> str:
        """The backend store a local `make server` serves by default."""
        return f"sqlite:///{self.runs_dir / 'mlflow.db'}"

    @property
    def artifacts_uri(self) -> str:
        return (self.artifact_root or self.runs_dir / "artifacts").as_uri()

    def artifact_location(self, experiment: str) -> str | None:
        """Where a new experiment keeps its runs' artifacts (None: the tracking server decides)."""
        return (self.artifact_root / experiment).as_uri() if self.artifact_root else None

    def mlflow(self) -> MlflowClient:
        """A client bound to this store (never MLflow's working-directory default)."""
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its INFO lines about creating tables
        return MlflowClient(tracking_uri=self.tracking_uri)

    # ---- Optuna -------------------------------------------------------------------------------------

    def optuna(self, heartbeat: bool = False) -> optuna.storages.RDBStorage:
        """The Optuna storage, its tables created here. With `heartbeat`, a running trial beats every
        heartbeat_seconds; one silent for 3 beats (its worker was killed) is failed by the next worker
        to start a trial, and re-queued once with the same parameters."""
        url = self.storage_url
        sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60}} if sqlite else {}}
        try:
            with warnings.catch_warnings():  # Optuna marks the heartbeat API experimental; we rely on it knowingly
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if heartbeat:
                    kwargs.update(heartbeat_interval=self.heartbeat_seconds, grace_period=3 * self.heartbeat_seconds,
                                  heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
                storage = optuna.storages.RDBStorage(url, **kwargs)
            if sqlite:  # readers and one writer at a time without blocking each other; kept by the file
                with storage.engine.connect() as connection:
                    connection.exec_driver_sql("PRAGMA journal_mode=WAL")
            return storage
        except (SQLAlchemyError, ImportError, ValueError, OSError) as e:  # bad URL, missing driver, unreachable
            raise UserError(f"STORAGE={redact(url)} cannot be opened: {redact_text(str(e).splitlines()[0], url)}") from None

