"""What produced a number: library versions and the code's git commit, logged with every run."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LIBRARIES = ("torch", "torchvision", "torch-fidelity", "mlflow", "optuna")
ROOT = Path(__file__).resolve().parents[2]


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


@cache
def git_commit() -> tuple[str, bool | None]:
    """(commit, dirty) of the checkout the harness runs from; ("unknown", None) outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, dirty


def provenance_params() -> dict[str, str]:
    """Run parameters: code.commit, code.dirty and lib.<name> versions."""
    commit, dirty = git_commit()
    return {"code.commit": commit, "code.dirty": "unknown" if dirty is None else str(dirty).lower(),
            **{f"lib.{name}": v for name, v in library_versions().items()}}
