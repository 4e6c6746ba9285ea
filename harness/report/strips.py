"""Samples for every trial, side by side: one strip per trial cut from the grids its run logged.

Every run draws its sample grid from the same fixed z (harness/family/generate.py GRID_SEED) and reconstructs
the same validation images, so the first row of each trial's samples.png and reconstructions.png is
the same z / the same faces across the study. Stacked in the order of the swept parameter (the KL
weights of vae_kl_sweep, k of gan_k_sweep), they show what the sweep changed. Strips are cut at the
grid's native pixels times a small whole factor, so a page of them loads fast.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from harness.core import keys
from harness.core.canvas import GRID_PADDING, GRID_PER_ROW
from harness.core.errors import warn

if TYPE_CHECKING:
    from harness.report.records import StudyRecord

MIN_FACE_PX = 64  # a face in a strip is drawn at least this wide (whole factors of its native size): readable
SHOWN_STATES = ("COMPLETE", "PRUNED")  # trials that wrote their final grids (a pruned one: its last round's)
GRID_COLUMNS = {"samples": GRID_PER_ROW, "reconstructions": 2 * GRID_PER_ROW}  # a grid's images per row, as drawn


@dataclass(frozen=True)
class Strip:
    trial: int
    family: str
    label: str  # the swept parameters' values, the objective, the state and flags
    pictures: dict[str, Path]  # samples / reconstructions -> the cropped strip


def order(record: "StudyRecord") -> pd.DataFrame:
    """The trials that have grids, in the order of the family and then of each swept parameter."""
    shown = record.table[record.table["state"].isin(SHOWN_STATES) & record.table.get("run_id", pd.Series(dtype=str)).notna()]
    by = (["family"] if shown["family"].nunique() > 1 else []) + [f"params.{p}" for p in record.swept
                                                                   if f"params.{p}" in shown] + ["number"]
    return shown.sort_values(by, na_position="last")


def _value(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def label(record: "StudyRecord", row: pd.Series) -> str:
    swept = ", ".join(f"{p} = {_value(row[f'params.{p}'])}" for p in record.swept
                      if f"params.{p}" in row and pd.notna(row[f"params.{p}"]))
    score = row.get(record.objective)
    text = f"trial {int(row['number'])}" + (f", {row['family']}" if row.get("family") else "") + (f": {swept}" if swept else "")
    text += f"; {record.objective} {_value(float(score))}" if pd.notna(score) else f"; {row['state'].lower()}"
    if row.get("flags") not in (None, "", "none"):
        text += f" (flagged {row['flags']})"
    return text


def first_row(grid: Path, image_size: int, per_row: int, out: Path) -> Path | None:
    """The grid's first row, each face at MIN_FACE_PX or more; None when the picture is not a grid of that geometry."""
    native = per_row * (image_size + GRID_PADDING) + GRID_PADDING
    row_height = image_size + 2 * GRID_PADDING
    with Image.open(grid) as picture:
        if picture.width % native or picture.height < row_height * (picture.width // native):
            return None
        enlarged = picture.width // native
        row = picture.crop((0, 0, picture.width, row_height * enlarged))
        factor = max(1, -(-MIN_FACE_PX // image_size))  # whole pixels: nearest-neighbour, never blurred
        row.resize((native * factor, row_height * factor), Image.Resampling.NEAREST).save(out, optimize=True)
    return out


def trial_strips(record: "StudyRecord", client: MlflowClient, out: Path) -> list[Strip]:
    folder = out / "strips"
    folder.mkdir(parents=True, exist_ok=True)
    strips = []
    for _, row in order(record).iterrows():
        run_id, number = row["run_id"], int(row["number"])
        try:
            image_size = int(float(row.get("params.data.image_size")))
        except (TypeError, ValueError):  # a run from before the data was described: no geometry to cut by
            continue
        pictures: dict[str, Path] = {}
        try:
            logged = {a.path for a in client.list_artifacts(run_id)}
            for name, artifact in keys.GRID_ARTIFACTS.items():
                per_row = GRID_COLUMNS[name]
                if artifact not in logged:
                    continue
                with tempfile.TemporaryDirectory() as tmp:  # the whole grid is not kept: the best trials' are
                    grid = Path(client.download_artifacts(run_id, artifact, tmp))
                    strip = first_row(grid, image_size, per_row, folder / f"trial-{number}-{name}.png")
                if strip is None:
                    warn(f"{record.name}: trial {number}'s {artifact} is not an {per_row}-wide grid of "
                         f"{image_size} px images; no strip cut from it")
                    continue
                pictures[name] = strip
        except MlflowException as e:  # the run's artifacts are gone (a deleted run, a moved store)
            warn(f"{record.name}: trial {number}'s grids cannot be read ({e.message.splitlines()[0][:120]})")
        if pictures:
            strips.append(Strip(number, str(row.get("family") or ""), label(record, row), pictures))
    return strips
