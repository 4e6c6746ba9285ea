"""Matplotlib figures drawn off-screen without pyplot: no global backend to select, no figure registry
to leak, the same on a laptop, a server and CI; and the layout of the image grids every trial logs,
declared once for the writer (harness/training/pictures.py) and the report that crops strips out of them."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

GRID_PER_ROW = 8  # images in a row of samples.png; reconstructions.png holds as many (reference, reconstruction) pairs
GRID_PADDING = 2  # pixels between images (and around them), before the grid is enlarged


def new_figure(width: float, height: float) -> Figure:
    """A figure of this size in inches, with its own Agg canvas."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: Path, dpi: int = 100) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=dpi, bbox_inches="tight")  # titles and legends beside the axes are never cut
    return path
