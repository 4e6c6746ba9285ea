"""Where a study writes, and on what device it trains.

Everything lives under RUNS_DIR (default ./mlruns) unless told otherwise:
  RUNS_DIR/mlflow.db   MLflow backend store   (TRACKING_URI overrides, e.g. http://host:5000)
  RUNS_DIR/artifacts/  MLflow artifacts       (one folder per experiment, then per run)
  RUNS_DIR/optuna.db   Optuna storage         (STORAGE overrides, e.g. postgresql://...)
The tracking URI is always set explicitly: MLflow's default depends on the working directory.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

import torch

from harness.errors import UserError

# No network here, and nobody asked to be counted: keep MLflow from phoning home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # we print one line per trial  # one line per artifact download is noise


@dataclass(frozen=True)
class Settings:
    runs_dir: Path
    storage_url: str
    tracking_uri: str
    artifact_root: Path | None  # None when a tracking server decides where artifacts go
    heartbeat_seconds: int = 30  # trials beat this often; silent for 3 beats = their worker is gone

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        runs_dir = Path(environ.get("RUNS_DIR") or "mlruns").expanduser().resolve()
        tracking_uri = environ.get("TRACKING_URI") or f"sqlite:///{runs_dir / 'mlflow.db'}"
        local = urlsplit(tracking_uri).scheme in ("sqlite", "file", "")
        heartbeat = environ.get("HEARTBEAT_SECONDS") or "30"
        if not heartbeat.isdigit() or int(heartbeat) < 1:
            raise UserError(f"HEARTBEAT_SECONDS={heartbeat} must be a whole number of seconds >= 1")
        return cls(
            runs_dir=runs_dir,
            storage_url=environ.get("STORAGE") or f"sqlite:///{runs_dir / 'optuna.db'}",
            tracking_uri=tracking_uri,
            artifact_root=runs_dir / "artifacts" if local else None,
            heartbeat_seconds=int(heartbeat),
        )

    def prepare(self) -> None:
        """Create RUNS_DIR and prove it is writable before anything is recorded there."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.runs_dir, prefix=".write-check-"):
                pass
        except OSError as e:
            raise UserError(f"RUNS_DIR {self.runs_dir} is not writable ({e.strerror}); "
                            "set RUNS_DIR= to a folder you can write") from None


def redact(url: str) -> str:
    """The URL with any password replaced, fit to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when there is one; an explicit device that is absent is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"DEVICE={name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            raise UserError(f"DEVICE={name} but {count} CUDA device(s) are visible; use DEVICE=cpu or auto")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"DEVICE={name} but MPS is not available here; use DEVICE=cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"DEVICE={name} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device
