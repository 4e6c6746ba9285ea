"""Datasets by name: each loader returns train/validation/test splits as uint8 image tensors.

Images stay uint8 (N, C, H, W) until a batch is drawn, so a whole face set sits on the training
device (50,000 64x64 grayscale images are 205 MB) and batches are drawn by index, without a
DataLoader. Validation drives the objective; test is kept for final scores.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from harness import synthfaces
from harness.errors import UserError


@dataclass(frozen=True)
class ImageSplits:
    train: Tensor  # uint8 (N, C, H, W)
    val: Tensor
    test: Tensor
    labels: Mapping[str, Tensor] = field(default_factory=dict)  # split -> (N, F) float factors
    label_names: tuple[str, ...] = ()
    description: Mapping[str, Any] = field(default_factory=dict)  # logged with every run

    @property
    def channels(self) -> int:
        return self.train.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.shape[-1]

    def to(self, device: torch.device) -> "ImageSplits":
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[..., ImageSplits]
    options: Mapping[str, Any]  # option -> default; a given value must have the default's type
    help: str
    check: Callable[[Mapping[str, Any], str], None] | None = None  # refuses bad values before loading


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, load: Callable[..., ImageSplits], options: Mapping[str, Any], help: str,
                     check: Callable[[Mapping[str, Any], str], None] | None = None) -> None:
    if name in _DATASETS:
        raise ValueError(f"dataset {name!r} is already registered")
    _DATASETS[name] = DatasetSpec(name, load, dict(options), help, check)


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def get_dataset(name: str, where: str = "dataset") -> DatasetSpec:
    if name not in _DATASETS:
        raise UserError(f"{where}: unknown dataset {name!r}{did_you_mean(name, _DATASETS)}; "
                        f"valid: {', '.join(dataset_names())}")
    return _DATASETS[name]


def resolve_options(name: str, given: Mapping[str, Any], where: str = "dataset") -> dict[str, Any]:
    """The loader's defaults overlaid with `given`, refusing unknown options and wrong types."""
    spec = get_dataset(name, where)
    options = dict(spec.options)
    for key, value in given.items():
        if key not in options:
            raise UserError(f"{where}: unknown option {key!r} for dataset {name!r}{did_you_mean(key, options)}; "
                            f"valid: {', '.join(options)}")
        default = options[key]
        ok = isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise UserError(f"{where}.{key}: expected {type(default).__name__}, got {value!r}")
        options[key] = value
    if spec.check is not None:
        spec.check(options, where)
    return options


def load_dataset(name: str, options: Mapping[str, Any]) -> ImageSplits:
    return get_dataset(name).load(**resolve_options(name, options))


def split_sizes(n: int, val_fraction: float, test_fraction: float, where: str = "dataset") -> tuple[int, int]:
    """(validation, test) sizes; refuses fractions that leave a split empty."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(f"{where}: val_fraction {val_fraction} and test_fraction {test_fraction} must be in (0, 1) "
                        "and sum to less than 1")
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if min(n_val, n_test, n - n_val - n_test) < 1:
        raise UserError(f"{where}: {n} images are too few to split {val_fraction}/{test_fraction}; use more images")
    return n_val, n_test


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A deterministic shuffled train/validation/test split of range(n), for sets that have none."""
    n_val, n_test = split_sizes(n, val_fraction, test_fraction)
    order = torch.from_numpy(np.random.Generator(np.random.PCG64(seed)).permutation(n))
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def batches(images: Tensor, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """Shuffled full batches when a generator is given (training), else every image in order.

    Training drops the last partial batch (a batch of one breaks BatchNorm); a set smaller than a
    batch is one batch.
    """
    n = images.shape[0]
    if generator is None:
        for start in range(0, n, batch_size):
            yield images[start:start + batch_size]
        return
    batch_size = min(batch_size, n)
    order = torch.randperm(n, generator=generator).to(images.device)
    for start in range(0, n - batch_size + 1, batch_size):
        yield images[order[start:start + batch_size]]


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [0, 1], the range of a sigmoid output."""
    return images.float().div_(255)


def did_you_mean(word: str, choices: Mapping[str, Any] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---- built-in datasets -------------------------------------------------------------------------

def _check_synthfaces(options: Mapping[str, Any], where: str) -> None:
    if options["size"] not in (32, 64):
        raise UserError(f"{where}.size: synthfaces are drawn at 32 or 64 pixels, not {options['size']}")
    if options["n"] < 3:
        raise UserError(f"{where}.n: synthfaces needs at least 3 images, got {options['n']}")
    split_sizes(options["n"], options["val_fraction"], options["test_fraction"], where)


def _load_synthfaces(size: int, n: int, seed: int, val_fraction: float, test_fraction: float) -> ImageSplits:
    images, factors = synthfaces.generate(n, size, seed)
    train, val, test = split_indices(n, val_fraction, test_fraction, seed)
    return ImageSplits(
        train=images[train], val=images[val], test=images[test],
        labels={"train": factors[train], "val": factors[val], "test": factors[test]},
        label_names=synthfaces.FACTORS,
        description={"dataset": "synthfaces", "image_size": size, "channels": 1, "n_train": len(train),
                     "n_val": len(val), "n_test": len(test), "data_seed": seed},
    )


register_dataset(
    "synthfaces", _load_synthfaces,
    options={"size": 32, "n": 6000, "seed": 0, "val_fraction": 0.1, "test_fraction": 0.1},
    help="built-in procedural grayscale faces (expression, pose, lighting factors as labels)",
    check=_check_synthfaces,
)
