"""Shared fixtures: a throwaway RUNS_DIR, a finished smoke study, MLflow lookups."""

from __future__ import annotations

import os

from harness.cli import MLFLOW_QUIET, main

for _key, _value in MLFLOW_QUIET.items():  # as `python -m harness` does, before MLflow is imported
    os.environ.setdefault(_key, _value)

import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Run

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained domain extractors and validation panels, shared by every test's RUNS_DIR: they are keyed
    by their recipe and data, so sharing changes no result, and the synthfaces extractor (minutes to
    train) is trained once per test session, as it is once per machine for a user."""
    return tmp_path_factory.mktemp("shared-cache")


def share_caches(runs: Path, shared: Path) -> None:
    (runs / "cache").mkdir(parents=True, exist_ok=True)
    for name in ("extractors", "panel"):
        (shared / name).mkdir(exist_ok=True)
        (runs / "cache" / name).symlink_to(shared / name, target_is_directory=True)


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_caches: Path) -> Path:
    """A fresh RUNS_DIR for one test (sharing the trained extractors), with no STORAGE/TRACKING_URI leaking in."""
    path = tmp_path / "runs"
    share_caches(path, shared_caches)
    monkeypatch.setenv("RUNS_DIR", str(path))
    monkeypatch.delenv("STORAGE", raising=False)
    monkeypatch.delenv("TRACKING_URI", raising=False)
    return path


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory, shared_caches: Path) -> Path:
    """RUNS_DIR holding one finished `smoke` study, shared by read-only tests."""
    path = tmp_path_factory.mktemp("smoke") / "runs"
    share_caches(path, shared_caches)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNS_DIR", str(path))
        mp.delenv("STORAGE", raising=False)
        mp.delenv("TRACKING_URI", raising=False)
        assert main(["study", "smoke", "--device", "cpu"]) == 0
    return path


def mlflow_runs(runs_dir: Path, experiment: str) -> list[Run]:
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment} in {runs_dir}"
    return client.search_runs([found.experiment_id], max_results=1000)


def split_runs(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """(parent runs, child runs)."""
    parents = [r for r in runs if r.data.tags.get("kind") == "study"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def second_ctrl_c_while_runs_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users press Ctrl-C twice: the second arrives while MLflow runs are being closed."""
    from harness.tracking.client import Tracker

    real_end_run = Tracker.end_run

    def end_run_with_a_second_ctrl_c(self, run_id, status, tags=None):
        os.kill(os.getpid(), signal.SIGINT)
        return real_end_run(self, run_id, status, tags)

    monkeypatch.setattr(Tracker, "end_run", end_run_with_a_second_ctrl_c)


def smoke_study_of(family: str, name: str) -> str:
    """The smoke study's text, renamed, for another (test) family."""
    text = (REPO / "studies" / "smoke.toml").read_text().replace('name = "smoke"', f'name = "{name}"')
    return text.replace('families = ["vae"]', f'families = ["{family}"]').replace("[space.vae]", f"[space.{family}]")


def write_study(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(port: int, server: subprocess.Popen, what: str, seconds: float = 90) -> None:
    """Until an MLflow server (UI or tracking) answers /health; fails if it exits or takes too long."""
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            return
        except OSError:
            if server.poll() is not None:
                said = server.stdout.read().decode(errors="replace") if server.stdout else ""
                raise AssertionError(f"the {what} exited with {server.returncode} before serving\n{said}")
            assert time.time() < deadline, f"the {what} did not start within {seconds:g} s"
            time.sleep(0.5)


