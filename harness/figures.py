"""The pictures logged with every trial: reconstruction and sample grids, loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import MaxNLocator
from torch import Tensor
from torchvision.utils import make_grid, save_image

from harness import keys
from harness.canvas import new_figure, save_figure


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


def loss_curves(history: Sequence[dict[str, float]], path: Path, title: str) -> None:
    """Train and validation curves, one panel per loss, log y when a loss spans decades."""
    rows = [{"step": metrics[keys.STEPS], "split": parts[0], "loss": parts[1], "value": value}
            for metrics in history for key, value in metrics.items()
            if (parts := keys.split_of(key)) and parts[0] in ("train", "val") and key not in keys.COST]
    frame = pd.DataFrame(rows)
    losses = list(dict.fromkeys(frame["loss"]))
    fig = new_figure(4.2 * len(losses), 3.4)
    axes = fig.subplots(1, len(losses), squeeze=False)
    for ax, loss in zip(axes[0], losses):
        part = frame[frame["loss"] == loss]
        sns.lineplot(data=part, x="step", y="value", hue="split", marker="o", ax=ax)
        values = part["value"]
        if (values > 0).all() and values.max() / values.min() > 20:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(keys.label(loss))
        ax.set_ylabel("")
    fig.suptitle(title)
    save_figure(fig, path)
