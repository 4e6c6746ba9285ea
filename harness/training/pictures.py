"""The pictures logged with every trial: reconstruction and sample grids, loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator
from torch import Tensor
from torchvision.utils import make_grid, save_image

from harness.core import keys
from harness.core.canvas import new_figure, save_figure


def reconstruction_grid(references: Tensor, reconstructions: Tensor, pairs_per_row: int = 8) -> Tensor:
    """References in odd columns, each reconstruction to its right, as the reports show them."""
    pairs = torch.stack([references, reconstructions], dim=1).flatten(0, 1)  # (2N, C, H, W): ref, rec, ref, ...
    return make_grid(pairs.float().cpu(), nrow=2 * pairs_per_row, padding=2, pad_value=1.0)


def image_grid(images: Tensor, per_row: int = 8) -> Tensor:
    return make_grid(images.float().cpu(), nrow=per_row, padding=2, pad_value=1.0)


def save_png(grid: Tensor, path: Path, min_width: int = 1024) -> None:
    """Save a grid, enlarged with nearest-neighbour steps so 32 px faces are visible in the UI."""
    scale = max(1, -(-min_width // grid.shape[-1]))
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    save_image(grid, path)


MAX_COLUMNS = 3  # panels a row: 3 x PANEL_INCHES[0] at the canvas's 100 dpi is 1,260 px, a laptop screen's width
PANEL_INCHES = (4.2, 3.2)


def loss_curves(history: Sequence[dict[str, float]], path: Path, title: str,
                curve: Sequence[dict[str, float]] = ()) -> None:
    """One panel per loss, at most MAX_COLUMNS a row: the training loss every few steps raw (faint)
    and smoothed (EMA), or its round means where no per-step curve was kept; the validation loss
    after every round; log y when a loss spans decades."""
    rounds: dict[str, dict[str, tuple[list[float], list[float]]]] = {}  # loss -> split -> (steps, values)
    for metrics in history:
        for key, value in metrics.items():
            parts = keys.split_of(key)
            if parts and parts[0] in ("train", "val") and key not in keys.COST:
                steps, values = rounds.setdefault(parts[1], {}).setdefault(parts[0], ([], []))
                steps.append(metrics[keys.STEPS])
                values.append(value)
    per_step: dict[str, tuple[list[float], list[float]]] = {}  # loss -> (steps, values)
    for point in curve:
        for key, value in point.items():
            parts = keys.split_of(keys.curve_of(key) or "")
            if parts:
                steps, values = per_step.setdefault(parts[1], ([], []))
                steps.append(point[keys.STEPS])
                values.append(value)
    losses = list(dict.fromkeys([*per_step, *rounds]))  # the family's declared curves first
    if not losses:
        raise ValueError(f"{title}: no training or validation loss to draw")
    columns = min(MAX_COLUMNS, len(losses))
    rows = -(-len(losses) // columns)
    fig = new_figure(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows + 0.4)
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax, loss in zip(axes, losses):
        drawn = []
        if loss in per_step:
            steps, values = per_step[loss]
            every = int(steps[1] - steps[0]) if len(steps) > 1 else 1
            ax.plot(steps, values, color="C0", alpha=0.3, linewidth=1)
            smooth = pd.Series(values).ewm(alpha=1 - keys.CURVE_SMOOTHING).mean()
            ax.plot(steps, smooth, color="C0", linewidth=1.8,
                    label=f"training, every {every} steps" if every > 1 else "training, every step")
            drawn += values
        elif "train" in rounds.get(loss, {}):
            steps, values = rounds[loss]["train"]
            ax.plot(steps, values, "o-", color="C0", label="training, round means")
            drawn += values
        if "val" in rounds.get(loss, {}):
            steps, values = rounds[loss]["val"]
            ax.plot(steps, values, "o-", color="C1", label="validation, each round")
            drawn += values
        if min(drawn) > 0 and max(drawn) / min(drawn) > 20:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer steps (the budget's)")
        ax.set_ylabel(keys.label(loss))
        ax.legend(fontsize=7)
    for ax in axes[len(losses):]:
        ax.set_visible(False)
    fig.suptitle(title + ("\ntraining every few steps: faint raw, solid smoothed" if per_step else ""), fontsize=10)
    save_figure(fig, path)
