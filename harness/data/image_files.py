"""Reading image files: CelebA (its folder, the official partition) and folders of PNG/JPEG files.

Like every loader in harness/data/formats.py, each returns `LoadedImages`: one uint8 (N, C, H, W)
tensor, the official split where the source has one, and a description of what was read.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from harness.core.errors import UserError, warn
from harness.data.formats import IMAGE_SUFFIXES, LoadedImages, existing, resize_square

# ---- image files: CelebA and folders ------------------------------------------------------------

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # Pillow's 16-bit grayscale (PNG, TIFF)


def _to_8bit(img: Any, path: Path) -> Any:
    """Pillow's convert() clips a 16-bit grayscale image at 255 (all but the darkest pixels go white), so
    scale it by 255/65535 first. 16-bit RGB PNGs already arrive as 8-bit RGB (Pillow keeps the high
    byte). 32-bit integer and float images have no agreed range: refused."""
    from PIL import Image

    if img.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img, dtype=np.float64)  # (H, W) in 0 .. 65535, byte order handled by Pillow
        return Image.fromarray((values * (255 / 65535)).round().astype(np.uint8), mode="L")
    if img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise UserError(f"{path}: a {kind} image (Pillow mode {img.mode}) has no agreed pixel range; "
                        "save it as 8-bit or 16-bit PNG")
    return img


def _decode(path: Path, mode: str, size: int) -> tuple[Tensor | None, tuple[int, int]]:
    """One image as uint8 (C, size, size), or None when it cannot be decoded; and its original size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            original = img.size
            img.load()
            img = _to_8bit(img, path).convert(mode)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None, (0, 0)
    tensor = TF.pil_to_tensor(img)
    return resize_square(tensor, size, str(path)), original


def decode_all(paths: Sequence[Path], mode: str, size: int, what: str, where: str) -> tuple[Tensor, list[int]]:
    """Decode, resize and centre-crop every file in parallel; skip the corrupt ones with a warning."""
    from tqdm.auto import tqdm

    channels = 1 if mode == "L" else 3
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        results = list(tqdm(pool.map(lambda p: _decode(p, mode, size), paths), total=len(paths),
                            desc=f"decoding {what}", unit="img", disable=None, leave=False))
    kept = [i for i, (tensor, _) in enumerate(results) if tensor is not None]
    skipped = [paths[i] for i, (tensor, _) in enumerate(results) if tensor is None]
    if not kept:
        raise UserError(f"{where}: none of the {len(paths)} image files of {what} could be decoded "
                        f"(first: {paths[0]}); are they images?")
    if skipped:
        warn(f"skipped {len(skipped)} of {len(paths)} files of {what} that could not be decoded "
             f"(first: {skipped[0]}); remove or replace them to silence this")
    sizes = {results[i][1] for i in kept}
    if len(sizes) > 1:
        examples = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
        warn(f"{what} has images of {len(sizes)} sizes ({examples}, ...); all are resized and centre-cropped "
             f"to {size}x{size} (option size)")
    images = torch.empty(len(kept), channels, size, size, dtype=torch.uint8)
    for row, i in enumerate(kept):
        images[row] = results[i][0]
    return images, kept


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_celeba(root: Path) -> tuple[Path, Path | None]:
    """The folder of aligned JPEGs (official or nested download layout) and the partition file."""
    folders = [root / "img_align_celeba" / "img_align_celeba", root / "img_align_celeba", root]
    jpegs = next((f for f in folders if f.is_dir() and any(p.suffix.lower() == ".jpg" for p in f.iterdir())), None)
    if jpegs is None:
        raise UserError(f"dataset.path: no CelebA images under {root}: expected img_align_celeba/*.jpg "
                        "(or img_align_celeba/img_align_celeba/*.jpg)")
    places = [root, root / "Eval", jpegs.parent, jpegs.parent.parent, jpegs.parent / "Eval"]
    partition = next((p / name for p in places for name in ("list_eval_partition.txt", "list_eval_partition.csv")
                      if (p / name).is_file()), None)
    return jpegs, partition


def read_partition(path: Path, where: str) -> dict[str, int]:
    """list_eval_partition.txt ('000001.jpg 0') or the .csv of some mirrors ('image_id,partition')."""
    partition = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0] == "image_id":
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise UserError(f"{where}: {path}:{number}: expected '<file>.jpg 0|1|2', got {line!r}")
        partition[fields[0]] = int(fields[1])
    return partition


def load_celeba(path: str, size: int, limit: int, where: str = "dataset") -> LoadedImages:
    root = existing(path, "the CelebA folder (holding img_align_celeba/)", where)
    jpegs, partition_file = find_celeba(root)
    files = _image_files(jpegs, recursive=False)
    split = None
    if partition_file is not None:
        partition = read_partition(partition_file, where)
        unlisted = [p for p in files if p.name not in partition]
        if unlisted:
            warn(f"{len(unlisted)} images in {jpegs} are not in {partition_file.name} (first: {unlisted[0].name}); they are left out")
            files = [p for p in files if p.name in partition]
    if limit:
        files = files[:limit]
    images, kept = decode_all(files, "RGB", size, f"CelebA ({jpegs})", where)
    if partition_file is not None:
        split = torch.tensor([partition[files[i].name] for i in kept], dtype=torch.int8)
    return LoadedImages(images, split, source={"folder": str(jpegs), "format": "jpeg",
                                                "partition": str(partition_file or "none (seeded split)"),
                                                "skipped": len(files) - len(kept)})


def load_folder(path: str, channels: int, size: int, limit: int, where: str = "dataset") -> LoadedImages:
    root = existing(path, "a folder of PNG/JPEG images", where)
    if not root.is_dir():
        raise UserError(f"{where}.path: {root} is not a folder")
    files = _image_files(root, recursive=True)
    if not files:
        raise UserError(f"{where}: no .png/.jpg/.jpeg files under {root}")
    if limit:
        files = files[:limit]
    images, kept = decode_all(files, "L" if channels == 1 else "RGB", size, str(root), where)
    return LoadedImages(images, source={"folder": str(root), "format": "image files", "skipped": len(files) - len(kept)})
