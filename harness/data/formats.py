"""Reading image sets as users have them: MATLAB .mat (v5 and v7.3), .npz and MNIST idx here; CelebA and
folders of image files in harness/data/image_files.py.

Every loader returns `LoadedImages`: one uint8 (N, C, H, W) tensor in the source's order, the
official split where the source has one, labels where it has them, and a description of what was
read. Orientation rules, so faces stand upright:
  - .mat arrays are read in MATLAB's logical shape (v7.3/HDF5 files store them with the axes
    reversed, which we undo); a flattened image is MATLAB column-major by default (`order = "F"`),
    i.e. reshape to (W, H) and transpose; `order = "C"` reads row-major data (NumPy, C).
  - .npz arrays are NumPy's, row-major by default.
Values are uint8 as they are, or floats in [0, 1] or [0, 255], rounded to uint8.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import shutil
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from harness.core.cache import sha256_file
from harness.core.errors import UserError

TRAIN, VAL, TEST = 0, 1, 2
LAYOUTS = ("auto", "NHW", "HWN", "NF", "FN", "NCHW", "NHWC", "HWCN")  # F: a flattened H*W image
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class LoadedImages:
    images: Tensor  # uint8 (N, C, H, W), in the source's order
    split: Tensor | None = None  # int8 (N,): TRAIN / VAL / TEST, the source's official split
    labels: Tensor | None = None  # float (N, F)
    label_names: tuple[str, ...] = ()
    source: dict[str, Any] = field(default_factory=dict)  # what was read and how
    label_classes: dict[str, int] = field(default_factory=dict)  # categorical label -> number of classes


def existing(path: str, what: str, where: str) -> Path:
    if not path:
        raise UserError(f"{where}.path: dataset needs the path to {what} (path = ... in the study, or DATA=...)")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise UserError(f"{where}.path: {resolved} does not exist; give the path to {what}")
    return resolved


# ---- arrays -> images ---------------------------------------------------------------------------

def _square_side(pixels: int) -> int | None:
    side = math.isqrt(pixels)
    return side if side * side == pixels and side >= 2 else None


def infer_layout(shape: Sequence[int], image_shape: Sequence[int] = ()) -> list[str]:
    """Layouts under which `shape` is a stack of images (square unless image_shape says otherwise)."""
    hw = tuple(image_shape)
    flat = (lambda f: f == hw[0] * hw[1]) if hw else (lambda f: _square_side(f) is not None)
    plane = (lambda h, w: (h, w) == hw) if hw else (lambda h, w: h == w and h >= 2)
    if len(shape) == 2:
        a, b = shape
        return [name for name, ok in (("NF", flat(b)), ("FN", flat(a))) if ok]
    if len(shape) == 3:
        a, b, c = shape
        return [name for name, ok in (("NHW", plane(b, c)), ("HWN", plane(a, b))) if ok]
    if len(shape) == 4:
        a, b, c, d = shape
        return [name for name, ok in (("NCHW", b in (1, 3) and plane(c, d)), ("NHWC", d in (1, 3) and plane(b, c)),
                                      ("HWCN", c in (1, 3) and plane(a, b))) if ok]
    return []


def array_to_images(array: np.ndarray, layout: str, order: str, image_shape: Sequence[int], where: str) -> tuple[np.ndarray, str]:
    """Any accepted layout -> (N, C, H, W), and the layout used."""
    shape = tuple(array.shape)
    if layout not in LAYOUTS:
        raise UserError(f"{where}.layout: {layout!r} is not a layout; valid: {', '.join(LAYOUTS)}")
    if order not in ("F", "C"):
        raise UserError(f"{where}.order: {order!r}: use 'F' (MATLAB column-major) or 'C' (row-major)")
    if image_shape and (len(image_shape) != 2 or min(image_shape) < 1):
        raise UserError(f"{where}.image_shape: expected [height, width], got {list(image_shape)}")
    if layout == "auto":
        layouts = infer_layout(shape, image_shape)
        if not layouts:
            if len(shape) == 2:
                raise UserError(f"{where}: array {shape} holds flat images of {shape[1]} (or {shape[0]}) pixels, "
                                "not square; give image_shape = [height, width]")
            raise UserError(f"{where}: cannot read array {shape} as images; give layout = one of "
                            f"{', '.join(LAYOUTS[1:])} (and image_shape = [height, width] for flat images)")
        layout = layouts[0] if len(layouts) == 1 else _smoothest_layout(array, layouts, order, image_shape, where)
    expected_ndim = {"NHW": 3, "HWN": 3, "NF": 2, "FN": 2, "NCHW": 4, "NHWC": 4, "HWCN": 4}[layout]
    if array.ndim != expected_ndim:
        raise UserError(f"{where}.layout: {layout} needs a {expected_ndim}-D array, got {shape}")
    if layout in ("NF", "FN"):
        flat = array if layout == "NF" else array.T
        pixels = flat.shape[1]
        if image_shape:
            h, w = image_shape
        elif (side := _square_side(pixels)) is not None:
            h = w = side
        else:
            raise UserError(f"{where}: flat images of {pixels} pixels are not square; give image_shape = [height, width]")
        if h * w != pixels:
            raise UserError(f"{where}.image_shape: {h}x{w} is not the {pixels} pixels of each flat image")
        # MATLAB column-major: pixel k is (row k % H, column k // H), i.e. reshape to (W, H), transpose.
        stack = flat.reshape(-1, w, h).transpose(0, 2, 1) if order == "F" else flat.reshape(-1, h, w)
        return stack[:, None], layout
    moves = {"NHW": lambda a: a[:, None], "HWN": lambda a: np.moveaxis(a, 2, 0)[:, None],
             "NCHW": lambda a: a, "NHWC": lambda a: np.moveaxis(a, 3, 1), "HWCN": lambda a: np.moveaxis(a, (3, 2), (0, 1))}
    return moves[layout](array), layout


SMOOTHNESS_SAMPLE = 64  # images per candidate layout whose neighbouring pixels are compared
SMOOTHNESS_MARGIN = 0.25  # how much more the chosen reading's neighbours must correlate than the next's


def _first_images(array: np.ndarray, layout: str, k: int) -> np.ndarray:
    """The first k images of the stack under this layout, without touching the rest of the array."""
    image_axis = {"NF": 0, "NHW": 0, "NCHW": 0, "NHWC": 0, "FN": 1, "HWN": 2, "HWCN": 3}[layout]
    return np.take(array, range(min(k, array.shape[image_axis])), axis=image_axis)


def neighbour_correlation(stack: np.ndarray) -> float:
    """How strongly horizontally and vertically neighbouring pixels correlate, pooled over a (N, C, H, W)
    stack: about 0.9 for photographs and faces, near 0 when an array is reshaped the wrong way round."""
    x = stack.astype(np.float64)
    x = x - x.mean(axis=(2, 3), keepdims=True)
    pairs = [(x[..., :, :-1], x[..., :, 1:]), (x[..., :-1, :], x[..., 1:, :])]
    values = []
    for a, b in pairs:
        denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        values.append(float((a * b).sum()) / denominator if denominator > 0 else 0.0)
    return sum(values) / len(values)


def _smoothest_layout(array: np.ndarray, layouts: list[str], order: str, image_shape: Sequence[int], where: str) -> str:
    """Of the layouts the shape allows, the one under which the images look like images: real pictures'
    neighbouring pixels correlate strongly, a wrong reshape's do not. Refused when no reading stands out."""
    scores = {layout: neighbour_correlation(array_to_images(_first_images(array, layout, SMOOTHNESS_SAMPLE),
                                                            layout, order, image_shape, where)[0])
              for layout in layouts}
    ranked = sorted(scores, key=scores.get, reverse=True)
    evidence = ", ".join(f"{scores[name]:.2f} as {name}" for name in ranked)
    best, runner_up = ranked[0], ranked[1]
    if scores[best] - scores[runner_up] < SMOOTHNESS_MARGIN:
        raise UserError(f"{where}: array {tuple(array.shape)} could be layout {' or '.join(layouts)} and neighbouring "
                        f"pixels do not tell them apart (they correlate {evidence}); give layout = '{best}' or another")
    print(f"{where}: array {tuple(array.shape)} read as layout {best}: neighbouring pixels correlate {evidence} "
          f"(set layout = ... to override)", file=sys.stderr, flush=True)
    return best


def to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """uint8 as is; other values must be in [0, 1] (scaled by 255) or [0, 255] (rounded)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise UserError(f"{where}: values of type {array.dtype} are not pixel values")
    values = array.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise UserError(f"{where}: the images contain NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise UserError(f"{where}: values range from {low:g} to {high:g}; expected [0, 1] or [0, 255]")
    scale = 255.0 if high <= 1.0 else 1.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


MAX_UPSCALE = 2  # MNIST's 28 pixels to 32 is fine; a 2x2 image blown up to 32x32 is not a picture


def resize_square(images: Tensor, size: int, where: str = "dataset") -> Tensor:
    """Resize the shorter side to `size` (antialiased bilinear), then centre-crop to size x size.
    Images more than MAX_UPSCALE times smaller are refused: upscaling invents the detail a score judges."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if MAX_UPSCALE * min(h, w) < size:
        raise UserError(f"{where}: the images are {h}x{w}, too small for size {size} (at most {MAX_UPSCALE}x upscaling); "
                        f"use images of at least {math.ceil(size / MAX_UPSCALE)} pixels a side or a smaller size")
    return TF.center_crop(TF.resize(images, [size], antialias=True), [size, size])


def _finish(stack: np.ndarray, size: int, where: str) -> Tensor:
    images = torch.from_numpy(np.ascontiguousarray(to_uint8(stack, where)))
    h, w = images.shape[-2:]
    if size:
        return resize_square(images, size, where)
    if h != w:
        raise UserError(f"{where}: the images are {h}x{w}, not square; set size = N to resize and centre-crop them")
    return images


# ---- MATLAB .mat --------------------------------------------------------------------------------

def read_mat(path: Path, where: str) -> tuple[dict[str, np.ndarray], str]:
    """All numeric arrays of a .mat file in MATLAB's logical shape, and the file's format."""
    import h5py
    import scipy.io

    if h5py.is_hdf5(path):  # MATLAB v7.3
        arrays: dict[str, np.ndarray] = {}
        try:
            with h5py.File(path, "r") as f:
                for name, item in f.items():
                    kind = item.attrs.get("MATLAB_class", b"")
                    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                    if isinstance(item, h5py.Dataset) and kind not in ("char", "cell", "struct") and item.dtype.kind in "uifb":
                        arrays[name] = np.asarray(item).T  # HDF5 holds MATLAB's column-major axes reversed
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"{where}: cannot read {path} as a MATLAB v7.3 file ({e}); is it truncated? export it again") from None
        return arrays, "v7.3 (HDF5)"
    try:
        contents = scipy.io.loadmat(path)
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError, EOFError, NotImplementedError, zlib.error) as e:
        raise UserError(f"{where}: cannot read {path} as a MATLAB file ({type(e).__name__}: {e}); "
                        "is it truncated or not a .mat? export it again") from None
    return {k: v for k, v in contents.items() if not k.startswith("__") and isinstance(v, np.ndarray)
            and v.dtype.kind in "uifb"}, "v5 (scipy)"


def _image_like(shape: Sequence[int]) -> bool:
    """Plausibly a stack of images: flat images of >= 64 pixels (not a label column), or >= 8x8 planes."""
    if len(shape) == 2:
        return min(shape) >= 2 and max(shape) >= 64
    return len(shape) in (3, 4) and sorted(shape)[-2] >= 8


def pick_array(arrays: dict[str, np.ndarray], key: str, path: Path, where: str) -> tuple[str, np.ndarray]:
    listing = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in arrays.items()) or "none"
    if key:
        if key not in arrays:
            raise UserError(f"{where}.key: {path.name} has no numeric array {key!r}; it has: {listing}")
        return key, arrays[key]
    candidates = {k: v for k, v in arrays.items() if _image_like(v.shape)}
    if not candidates:
        raise UserError(f"{where}: {path.name} has no image-like array (numeric arrays: {listing})")
    if len(candidates) > 1:
        names = ", ".join(f"{k} {tuple(v.shape)}" for k, v in candidates.items())
        raise UserError(f"{where}: {path.name} has several image-like arrays: {names}; pick one with key = '<name>' (--key)")
    return next(iter(candidates.items()))


@dataclass(frozen=True)
class ArrayRead:
    """How to read images out of a file of arrays: the dataset options of .mat and .npz sets."""

    key: str  # the array's name ("": the one image-like array)
    layout: str  # one of LAYOUTS
    order: str  # F (MATLAB, column-major) or C (row-major): how a flattened image is unrolled
    image_shape: Sequence[int]  # (H, W) of a flattened image that is not square; () when it is
    size: int  # resized to size x size (0: as stored)


def _array_images(path: Path, arrays: dict[str, np.ndarray], fmt: str, read: ArrayRead, where: str) -> LoadedImages:
    name, array = pick_array(arrays, read.key, path, where)
    stack, used = array_to_images(array, read.layout, read.order, read.image_shape, f"{where} ({path.name}:{name})")
    images = _finish(stack, read.size, f"{where} ({path.name}:{name})")
    source = {"file": str(path), "format": fmt, "key": name, "layout": used,
              "order": read.order if used in ("NF", "FN") else "-", "array_shape": list(array.shape)}
    label = _class_labels(arrays, len(images))
    if label is None:
        return LoadedImages(images, source=source)
    label_name, codes, classes = label
    return LoadedImages(images, labels=codes[:, None], label_names=(label_name,), label_classes={label_name: classes},
                        source={**source, "labels": f"{label_name} ({classes} classes)"})


LABEL_KEYS = ("gnd", "labels", "label", "y")  # class labels as the Deng Cai face sets and NumPy users name them


def _class_labels(arrays: dict[str, np.ndarray], n: int) -> tuple[str, Tensor, int] | None:
    """(name, class index per image as float, number of classes) from an integer column beside the
    images (one value per image, between 2 and n / 2 distinct values), or None."""
    for name in LABEL_KEYS:
        values = arrays.get(name)
        if values is None or values.size != n or values.ndim > 2 or (values.ndim == 2 and 1 not in values.shape):
            continue
        flat = values.reshape(-1)
        if not np.issubdtype(flat.dtype, np.number) or not np.all(np.equal(np.mod(flat, 1), 0)):
            continue
        classes, codes = np.unique(flat, return_inverse=True)
        if 2 <= len(classes) <= n // 2:
            return name, torch.from_numpy(codes.astype(np.float32)), len(classes)
    return None


def load_mat(path: str, key: str, layout: str, order: str, image_shape: list, size: int, where: str = "dataset") -> LoadedImages:
    file = existing(path, "a .mat file", where)
    arrays, fmt = read_mat(file, where)
    return _array_images(file, arrays, fmt, ArrayRead(key, layout, order, image_shape, size), where)


def load_npz(path: str, key: str, layout: str, order: str, image_shape: list, size: int, where: str = "dataset") -> LoadedImages:
    file = existing(path, "a .npz file", where)
    try:
        with open(file, "rb") as handle, np.load(handle, allow_pickle=False) as contents:  # closed even when it is no zip
            arrays = {k: contents[k] for k in contents.files if contents[k].dtype.kind in "uifb"}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise UserError(f"{where}: cannot read {file} as a .npz file ({type(e).__name__}: {e})") from None
    key = key or ("images" if "images" in arrays else "")
    loaded = _array_images(file, arrays, "npz", ArrayRead(key, layout, order, image_shape, size), where)
    if "split" in arrays and arrays["split"].shape == (len(loaded.images),):  # written by `data check --export`
        loaded.split = torch.from_numpy(arrays["split"].astype(np.int8))
    return loaded


# ---- MNIST idx files ----------------------------------------------------------------------------

MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def _read_idx(path: Path, images: bool) -> Tensor:
    """torchvision's idx reader; .gz files are decompressed to a temporary file first."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    reader = read_image_file if images else read_label_file
    if path.suffix != ".gz":
        return reader(str(path))
    with tempfile.NamedTemporaryFile() as tmp, gzip.open(path, "rb") as packed:
        shutil.copyfileobj(packed, tmp)
        tmp.flush()
        return reader(tmp.name)


def load_mnist(path: str, size: int, where: str = "dataset") -> LoadedImages:
    root = existing(path, "a folder with the MNIST idx files", where)
    found: dict[str, Path] = {}
    for role, name in MNIST_FILES.items():
        matches = sorted(p for p in ([root] if root.is_file() else root.rglob(name + "*"))
                         if p.name in (name, name + ".gz"))
        if matches:
            found[role] = matches[0]
    if len(found) < 4:
        missing = ", ".join(f"{MNIST_FILES[r]}[.gz]" for r in MNIST_FILES if r not in found)
        raise UserError(f"{where}: no MNIST idx files {missing} under {root}; nothing is downloaded: copy the four "
                        f"files there (torchvision keeps them in <root>/MNIST/raw/)")
    try:
        parts = {role: _read_idx(p, role.endswith("images")) for role, p in found.items()}
    except (OSError, ValueError, TypeError, RuntimeError, EOFError) as e:
        raise UserError(f"{where}: cannot read the MNIST idx files under {root} ({e}); are they complete?") from None
    images = torch.cat([parts["train_images"], parts["test_images"]])[:, None]  # (N, 1, 28, 28), row-major
    labels = torch.cat([parts["train_labels"], parts["test_labels"]]).float()[:, None]
    if len(labels) != len(images):
        raise UserError(f"{where}: the MNIST files under {root} hold {len(images)} images but {len(labels)} labels")
    split = torch.cat([torch.full((len(parts["train_images"]),), TRAIN, dtype=torch.int8),
                       torch.full((len(parts["test_images"]),), TEST, dtype=torch.int8)])
    if size:
        images = resize_square(images, size, where)
    return LoadedImages(images, split, labels, ("digit",),
                        {"files": ", ".join(str(p) for p in found.values()), "format": "idx"}, {"digit": 10})


# ---- cache keys ---------------------------------------------------------------------------------

def fingerprint(path: str) -> str:
    """A file's content sha256; for a folder, a hash of every file's relative path, size and mtime
    (hashing 200,000 CelebA JPEGs on every start would cost more than decoding a cached tensor)."""
    target = Path(path).expanduser()
    digest = hashlib.sha256()
    if target.is_file():
        return "sha256:" + sha256_file(target)
    for p in sorted(target.rglob("*")):
        if p.is_file():
            stat = p.stat()
            digest.update(f"{p.relative_to(target)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "listing:" + digest.hexdigest()
