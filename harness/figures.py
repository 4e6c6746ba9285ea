"""The pictures logged with every trial: reconstruction and sample grids, loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402


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
    rows = [{"epoch": epoch, "split": key.split("_", 1)[0], "loss": key.split("_", 1)[1], "value": value}
            for epoch, metrics in enumerate(history, start=1) for key, value in metrics.items()
            if key.startswith(("train_", "val_")) and key != "train_images_per_s"]
    frame = pd.DataFrame(rows)
    losses = list(dict.fromkeys(frame["loss"]))
    fig, axes = plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.4), squeeze=False)
    for ax, loss in zip(axes[0], losses):
        part = frame[frame["loss"] == loss]
        sns.lineplot(data=part, x="epoch", y="value", hue="split", marker="o", ax=ax)
        values = part["value"]
        if (values > 0).all() and values.max() / values.min() > 20:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(loss)
        ax.set_ylabel("")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
