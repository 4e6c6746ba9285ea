"""Load-or-build for everything cached under RUNS_DIR/cache (decoded datasets, domain extractors,
reference statistics), and the content hashes their keys are made of.

A cache file is written to a temporary name and renamed into place, so a reader never sees half of
one; a file that cannot be read (cut short by a crash, or from an older layout) is built again,
saying so in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from harness.core.errors import warn

T = TypeVar("T")
UNREADABLE = (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError)


def load_or_build(path: Path, build: Callable[[], dict[str, Any]], parse: Callable[[dict[str, Any]], T],
                  what: str) -> tuple[T, bool]:
    """(the cached value, whether it was built now). `build` makes the tensors to store; `parse`
    turns what is stored into the value (and refuses a file of another layout by raising KeyError)."""
    if path.is_file():
        try:
            return parse(torch.load(path, map_location="cpu", weights_only=True)), False
        except UNREADABLE as e:
            warn(f"ignoring unreadable {what} {path} ({type(e).__name__}); building it again")
    stored = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(stored, partial)
    partial.replace(path)  # atomic: a reader never sees half a file
    return parse(stored), True


def key_of(recipe: Any, length: int = 20) -> str:
    """A short stable hash of a JSON-able description (a cache key)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:length]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tensor(tensor: torch.Tensor) -> str:
    """The content hash of a (CPU, contiguous) tensor's bytes."""
    return hashlib.sha256(tensor.cpu().contiguous().numpy().tobytes()).hexdigest()
