"""Datasets by name: loaded once into a uint8 tensor cache, split, and placed on the training device.

A dataset is a loader (harness/data/formats.py, image_files.py, or synthfaces) plus its options. File-based sets are
decoded and resized once into `RUNS_DIR/cache/` (keyed by the source's content hash and the
options), so later studies start in seconds. Images stay uint8 (N, C, H, W) until a batch is
drawn: a whole face set sits on the training device (50,000 64x64 grayscale images are 205 MB)
and batches are drawn by index; only a set that does not fit goes through a DataLoader.
Validation drives the objective; test is kept for final scores.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from harness.core.cache import key_of, load_or_build
from harness.core.errors import UserError
from harness.data import formats as loaders
from harness.data import image_files, synthfaces
from harness.data.formats import TEST, TRAIN, VAL, LoadedImages

CACHE_VERSION = 3  # bump when a loader's output changes, so old caches are not reused
SPLIT_OPTIONS = {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.1}  # every dataset has these


class TrainShape:
    """channels and image_size of a set of splits, read from its `train` images (N, C, H, W)."""

    train: Tensor

    @property
    def channels(self) -> int:
        return self.train.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.shape[-1]


@dataclass(frozen=True)
class ImageSplits(TrainShape):
    train: Tensor  # uint8 (N, C, H, W), on `device` when `resident`, else on the CPU
    val: Tensor
    test: Tensor
    labels: Mapping[str, Tensor] = field(default_factory=dict)  # split -> (N, F) float
    label_names: tuple[str, ...] = ()
    description: Mapping[str, Any] = field(default_factory=dict)  # logged with every run
    label_classes: Mapping[str, int] = field(default_factory=dict)  # categorical label -> number of classes
    device: torch.device = torch.device("cpu")
    resident: bool = True  # the images live on the device: batches are drawn by index there

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.train, self.val, self.test))

    def place(self, device: torch.device, max_bytes: int | None = None) -> "ImageSplits":
        """The whole set on `device` when it fits (by default in half its free memory), else kept
        on the CPU (pinned) and fed through a DataLoader."""
        if max_bytes is None:
            max_bytes = torch.cuda.mem_get_info(device)[0] // 2 if device.type == "cuda" else self.nbytes
        if self.nbytes <= max_bytes:
            moved = {k: getattr(self, k).to(device) for k in ("train", "val", "test")}
            return replace(self, **moved, device=device, resident=True)
        print(f"note: the images ({self.nbytes / 2**20:.0f} MiB) do not fit on {device} "
              f"({max_bytes / 2**20:.0f} MiB allowed); batches go through a DataLoader", flush=True)
        pinned = {k: getattr(self, k).cpu().pin_memory() if device.type == "cuda" else getattr(self, k).cpu()
                  for k in ("train", "val", "test")}
        return replace(self, **pinned, device=device, resident=False)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
        """Shuffled full batches on the device; the last partial batch is dropped (a batch of one
        breaks BatchNorm); a set smaller than a batch is one batch. Both paths draw the same order."""
        n = self.train.shape[0]
        batch_size = min(batch_size, n)
        if self.resident:
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n - batch_size + 1, batch_size):
                yield self.train[order[start:start + batch_size]]
            return
        # The same one permutation per epoch as above (a RandomSampler draws a second one when it runs
        # out, which would shift the next epoch's order). The loader's own generator only seeds
        # workers; without one it would draw from the global RNG and shift every later dropout and
        # sampling draw.
        order = torch.randperm(n, generator=generator).tolist()
        loader = DataLoader(TensorDataset(self.train), batch_size=batch_size, drop_last=True, sampler=order,
                            generator=torch.Generator())
        for (x,) in loader:
            yield x.to(self.device, non_blocking=True)

    def batches(self, split: str, batch_size: int) -> Iterator[Tensor]:
        """Every image of a split, in order, on the device."""
        images = getattr(self, split)
        for start in range(0, images.shape[0], batch_size):
            yield images[start:start + batch_size].to(self.device, non_blocking=True)


def to_model_range(images: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """uint8 [0, 255] -> float in the range of the model's output activation: [0, 1] for a sigmoid,
    [-1, 1] for a tanh (the same as ToTensor then Normalize(0.5, 0.5)); in the default float dtype
    (fp32, or fp64 in the exactness tests)."""
    low, high = value_range
    return images.to(torch.get_default_dtype()).mul_((high - low) / 255).add_(low)


def from_model_range(images: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    low, high = value_range
    return ((images - low) / (high - low)).clamp(0, 1)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[..., LoadedImages]  # called with the dataset's own options (not the split options)
    options: Mapping[str, Any]  # option -> default; a given value must have the default's type
    help: str
    check: Callable[[Mapping[str, Any], str], None] | None = None  # refuses bad values before loading
    cached: bool = False  # decoded once into RUNS_DIR/cache (file-based sets)
    # A procedural set draws fresh images from a seed: draw(options, n, seed). Scores compare its
    # samples with fresh draws no study trained on (harness/scoring/real_images.py).
    draw: Callable[[Mapping[str, Any], int, int], LoadedImages] | None = None
    sample_count: str | None = None  # the option that sets how many images a study uses (n, limit)

    @property
    def all_options(self) -> dict[str, Any]:
        return {**self.options, **{k: v for k, v in SPLIT_OPTIONS.items() if k not in self.options}}


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, load: Callable[..., LoadedImages], options: Mapping[str, Any], help: str,
                     check: Callable[[Mapping[str, Any], str], None] | None = None, cached: bool = False,
                     draw: Callable[[Mapping[str, Any], int, int], LoadedImages] | None = None,
                     sample_count: str | None = None) -> None:
    if name in _DATASETS:
        raise ValueError(f"dataset {name!r} is already registered")
    if sample_count is not None and sample_count not in options:
        raise ValueError(f"dataset {name!r}: sample_count {sample_count!r} is not one of its options")
    _DATASETS[name] = DatasetSpec(name, load, dict(options), help, check, cached, draw, sample_count)


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def get_dataset(name: str, where: str = "dataset") -> DatasetSpec:
    if name not in _DATASETS:
        raise UserError(f"{where}: unknown dataset {name!r}{did_you_mean(name, _DATASETS)}; "
                        f"valid: {', '.join(dataset_names())}")
    return _DATASETS[name]


def resolve_options(name: str, given: Mapping[str, Any], where: str = "dataset") -> dict[str, Any]:
    """The dataset's defaults overlaid with `given`, refusing unknown options and wrong types."""
    spec = get_dataset(name, where)
    options = spec.all_options
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
    if options["seed"] < 0:
        raise UserError(f"{where}.seed: must be >= 0, got {options['seed']}")
    split_sizes(100, options["val_fraction"], options["test_fraction"], where)
    if spec.check is not None:
        spec.check(options, where)
    return options


def load_dataset(name: str, options: Mapping[str, Any], cache_dir: Path | None = None) -> ImageSplits:
    """Load (from the cache when it holds this source with these options), then split."""
    options = resolve_options(name, options)
    return make_splits(name, load_images(name, options, cache_dir), options)


def load_images(name: str, options: Mapping[str, Any], cache_dir: Path | None = None) -> LoadedImages:
    """The whole set in the source's order, before splitting (resolved options expected)."""
    spec = get_dataset(name)
    own = {k: options[k] for k in spec.options}
    if spec.cached and cache_dir is not None:
        return _load_cached(spec, own, cache_dir)
    return spec.load(**own)


def infer_dataset(path: str) -> str:
    """Which loader reads `path`: by extension for files, by contents for folders."""
    target = Path(path).expanduser()
    if not target.exists():
        raise UserError(f"{target} does not exist")
    mnist_names = {n + ext for n in loaders.MNIST_FILES.values() for ext in ("", ".gz")}
    if target.is_file():
        by_suffix = {".mat": "mat", ".npz": "npz"}
        if target.suffix.lower() in by_suffix:
            return by_suffix[target.suffix.lower()]
        if target.name in mnist_names:
            return "mnist"
        raise UserError(f"cannot tell what kind of data {target} is; give the dataset "
                        f"(--dataset / DATASET=), one of {', '.join(dataset_names())}")
    if any((target / name).exists() for name in ("img_align_celeba", "list_eval_partition.txt", "list_eval_partition.csv")):
        return "celeba"
    if any(p.name in mnist_names for p in target.rglob("*-ubyte*")):
        return "mnist"
    return "folder"


def _load_cached(spec: DatasetSpec, options: Mapping[str, Any], cache_dir: Path) -> LoadedImages:
    if not options.get("path") or not Path(options["path"]).expanduser().exists():
        return spec.load(**options)  # the loader says what is missing
    recipe = {"dataset": spec.name, "version": CACHE_VERSION, "source": loaders.fingerprint(options["path"]),
              **{k: v for k, v in options.items() if k != "path"}}  # the file's content, not where it lies
    path = cache_dir / f"{spec.name}-{key_of(recipe)}.pt"

    def build() -> dict[str, Any]:
        loaded = spec.load(**options)
        return {"images": loaded.images, "split": loaded.split, "labels": loaded.labels,
                "label_names": list(loaded.label_names), "source": loaded.source, "label_classes": loaded.label_classes}

    def parse(stored: dict[str, Any]) -> LoadedImages:
        return LoadedImages(stored["images"], stored["split"], stored["labels"], tuple(stored["label_names"]),
                            {**stored["source"], "cache": str(path)}, dict(stored.get("label_classes", {})))

    loaded, _ = load_or_build(path, build, parse, "dataset cache")
    return loaded


def make_splits(name: str, loaded: LoadedImages, options: Mapping[str, Any]) -> ImageSplits:
    images = loaded.images
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"a loader must return uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise UserError(f"dataset {name}: images have {images.shape[1]} channels; the models take 1 (grayscale) "
                        "or 3 (RGB): convert them (for a folder, set channels = 1 or 3)")
    train, val, test, how = assign_splits(name, loaded, options)
    labels = {} if loaded.labels is None else {"train": loaded.labels[train], "val": loaded.labels[val],
                                               "test": loaded.labels[test]}
    description = {"dataset": name, "image_size": images.shape[-1], "channels": images.shape[1],
                   "n_train": len(train), "n_val": len(val), "n_test": len(test), "split": how, **loaded.source}
    return ImageSplits(images[train], images[val], images[test], labels, loaded.label_names, description,
                       label_classes=dict(loaded.label_classes))


def assign_splits(name: str, loaded: LoadedImages, options: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor, str]:
    """(train, val, test) indices and how they were made: the official split where the source has
    one (validation carved from train by the seed when it has none), else a seeded shuffle."""
    n = loaded.images.shape[0]
    seed, val_fraction, test_fraction = options["seed"], options["val_fraction"], options["test_fraction"]
    if loaded.split is None:
        train, val, test = split_indices(n, val_fraction, test_fraction, seed)
        how = f"seeded {seed}"
    else:
        index = torch.arange(n)
        train, val, test = (index[loaded.split == s] for s in (TRAIN, VAL, TEST))
        how = "official"
        if len(val) == 0:  # e.g. MNIST: carve validation from the official train set
            n_val, _ = split_sizes(len(train), val_fraction, 0.5, f"dataset {name}")
            order = torch.from_numpy(np.random.Generator(np.random.PCG64(seed)).permutation(len(train)))
            train, val = train[order[n_val:]].sort().values, train[order[:n_val]].sort().values
            how = f"official train/test, validation seeded {seed}"
        if min(len(train), len(val), len(test)) == 0:
            raise UserError(f"dataset {name}: the official split leaves a split empty "
                            f"({len(train)}/{len(val)}/{len(test)} train/val/test)")
    return train, val, test, how


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
    """A deterministic shuffled train/validation/test split of range(n), for sets that have none;
    each split keeps the source's order, as an official split does."""
    n_val, n_test = split_sizes(n, val_fraction, test_fraction)
    order = torch.from_numpy(np.random.Generator(np.random.PCG64(seed)).permutation(n))
    return tuple(part.sort().values for part in (order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]))


def did_you_mean(word: str, choices: Mapping[str, Any] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---- built-in datasets, registered in one place --------------------------------------------------

def _load_synthfaces(size: int, n: int, seed: int) -> LoadedImages:
    images, factors = synthfaces.generate(n, size, seed)
    return LoadedImages(images, labels=factors, label_names=synthfaces.FACTORS, source={"generator": "synthfaces"},
                        label_classes={"expression": len(synthfaces.EXPRESSIONS)})


def _draw_synthfaces(options: Mapping[str, Any], n: int, seed: int) -> LoadedImages:
    return _load_synthfaces(options["size"], n, seed)


def _check_synthfaces(options: Mapping[str, Any], where: str) -> None:
    if options["size"] not in (32, 64):
        raise UserError(f"{where}.size: synthfaces are drawn at 32 or 64 pixels, not {options['size']}")
    if options["n"] < 3:
        raise UserError(f"{where}.n: synthfaces needs at least 3 images, got {options['n']}")
    split_sizes(options["n"], options["val_fraction"], options["test_fraction"], where)


def _check_files(options: Mapping[str, Any], where: str) -> None:
    if options["size"] and not 8 <= options["size"] <= 1024:
        raise UserError(f"{where}.size: {options['size']} is not an image size; use 8 .. 1024 (0 keeps the source's)")
    if options.get("layout", "auto") not in loaders.LAYOUTS:
        raise UserError(f"{where}.layout: {options['layout']!r} is not a layout; valid: {', '.join(loaders.LAYOUTS)}")
    if options.get("order", "F") not in ("F", "C"):
        raise UserError(f"{where}.order: {options['order']!r}: use 'F' (MATLAB column-major) or 'C' (row-major)")
    shape = options.get("image_shape", [])
    if shape and (len(shape) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise UserError(f"{where}.image_shape: expected [height, width] in pixels, got {shape}")
    if "limit" in options and options["limit"] < 0:
        raise UserError(f"{where}.limit: must be >= 0 (0 = every image), got {options['limit']}")
    if options.get("channels", 1) not in (1, 3):
        raise UserError(f"{where}.channels: {options['channels']}: use 1 (grayscale) or 3 (RGB)")


_ARRAY_OPTIONS = {"path": "", "key": "", "layout": "auto", "image_shape": [], "size": 0}

register_dataset(
    "synthfaces", _load_synthfaces, {"size": 32, "n": 6000, "seed": 0},
    help="built-in procedural grayscale faces (expression, pose, lighting factors as labels)", check=_check_synthfaces,
    draw=_draw_synthfaces, sample_count="n")
register_dataset(
    "ck", loaders.load_mat, {**_ARRAY_OPTIONS, "order": "F"},
    help="Cohn-Kanade faces in a MATLAB .mat file (v5 or v7.3); any face set in .mat form", check=_check_files, cached=True)
register_dataset(
    "mat", loaders.load_mat, {**_ARRAY_OPTIONS, "order": "F"},
    help="any image array in a MATLAB .mat file (v5 or v7.3), e.g. ../shared/data/PIE_32x32.mat", check=_check_files, cached=True)
register_dataset(
    "npz", loaders.load_npz, {**_ARRAY_OPTIONS, "order": "C"},
    help="a NumPy .npz array (key 'images' by default, as `data check --export` writes)", check=_check_files, cached=True)
register_dataset(
    "celeba", image_files.load_celeba, {"path": "", "size": 64, "limit": 0},
    help="CelebA aligned&cropped: img_align_celeba/*.jpg (or nested) + list_eval_partition.txt; "
         "Resize + CenterCrop to size (64; 112/128), RGB", check=_check_files, cached=True, sample_count="limit")
register_dataset(
    "mnist", loaders.load_mnist, {"path": "", "size": 0},
    help="MNIST idx files (as torchvision keeps them in MNIST/raw/); never downloaded", check=_check_files, cached=True)
register_dataset(
    "folder", image_files.load_folder, {"path": "", "channels": 3, "size": 64, "limit": 0},
    help="any tree of PNG/JPEG files, resized and centre-cropped to size; channels 1 or 3", check=_check_files, cached=True,
    sample_count="limit")
