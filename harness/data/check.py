"""`python -m harness data check SOURCE`: what the harness sees in a dataset, before any training.

Prints count, shape, dtype, value range, split sizes and mean/std, and writes a preview grid, so
a user sees at once whether faces are upright and the range is right. `--export FILE.npz` writes
the images exactly as loaded (uint8 (N, C, H, W) under `images`, before any scaling to a model's
range), with each image's split under `split` (0 train, 1 validation, 2 test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from harness.core.errors import UserError
from harness.data.datasets import assign_splits, dataset_names, get_dataset, infer_dataset, load_images, resolve_options
from harness.data.formats import TEST, TRAIN, VAL
from harness.training.pictures import image_grid, save_png


def resolve_source(source: str, dataset: str | None, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A registered dataset name (synthfaces) or a path, with the dataset inferred when not given."""
    options = dict(options)
    if source in dataset_names() and not Path(source).exists():
        return source, options
    name = dataset or infer_dataset(source)
    if "path" not in get_dataset(name).options:
        raise UserError(f"dataset {name} does not read files; give a path with a dataset that does")
    options["path"] = source
    return name, options


def check(source: str, dataset: str | None, options: Mapping[str, Any], cache_dir: Path,
          preview: Path, export: Path | None) -> str:
    name, given = resolve_source(source, dataset, options)
    resolved = resolve_options(name, given, "data check")
    loaded = load_images(name, resolved, cache_dir)
    train, val, test, how = assign_splits(name, loaded, resolved)
    images = loaded.images
    n, c, h, w = images.shape
    unit = images.float() / 255
    per_channel = ", ".join(f"{m:.3f}/{s:.3f}" for m, s in zip(unit.mean(dim=(0, 2, 3)).tolist(), unit.std(dim=(0, 2, 3)).tolist()))
    how_read = ", ".join(f"{k} {v}" for k, v in loaded.source.items() if k not in ("file", "folder"))
    where = loaded.source.get("file") or loaded.source.get("folder") or name
    lines = [
        f"source   {where} ({name}: {how_read})",
        f"images   {n} x {c} x {h} x {w}, {str(images.dtype).removeprefix('torch.')}, values {int(images.min())}..{int(images.max())}, "
        f"mean/std per channel as [0, 1]: {per_channel}",
        f"splits   train {len(train)}, val {len(val)}, test {len(test)} ({how})",
        f"labels   {', '.join(loaded.label_names) if loaded.labels is not None else 'none'}",
    ]
    preview.parent.mkdir(parents=True, exist_ok=True)
    save_png(image_grid(unit[:64]), preview)
    lines.append(f"preview  {preview} (the first {min(n, 64)} images, in the source's order)")
    if export is not None:
        split = torch.empty(n, dtype=torch.int8)
        for code, index in ((TRAIN, train), (VAL, val), (TEST, test)):
            split[index] = code
        export.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(export, images=images.numpy(), split=split.numpy())
        lines.append(f"exported {export}: images uint8 {tuple(images.shape)}, split int8 ({n},)")
    return "\n".join(lines)
