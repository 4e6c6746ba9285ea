"""Matplotlib figures drawn off-screen without pyplot: no global backend to select, no figure registry
to leak, the same on a laptop, a server and CI; and the layout of the image grids every trial logs,
declared once for the writer (harness/training/pictures.py) and the report that crops strips out of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.core.errors import warn

GRID_PER_ROW = 8  # images in a row of samples.png; reconstructions.png holds as many (reference, reconstruction) pairs
GRID_PADDING = 2  # pixels between images (and around them), before the grid is enlarged


def new_figure(width: float, height: float) -> Figure:
    """A figure of this size in inches, with its own Agg canvas."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: Path, dpi: int = 100) -> Path:
    """The figure as a PNG, laid out; what `layout_faults` finds wrong is said on stderr, naming the file."""
    figure.tight_layout()
    for fault in layout_faults(figure):
        warn(f"{path.name}: {fault}")
    figure.savefig(path, dpi=dpi, bbox_inches="tight")  # titles and legends beside the axes are never cut
    return path


def _marks(axes: Axes) -> list[np.ndarray]:
    """Where the axes drew its data, in display pixels: line vertices (and points between them),
    scatter points, bars' corners and centres."""
    marks = []
    for line in axes.get_lines():
        xy = np.asarray(line.get_xydata(), dtype=float)
        if len(xy) > 1:  # a line passing under a legend is covered though no vertex is
            steps = np.linspace(0, 1, 9)[:, None, None]
            xy = (xy[:-1] + steps * (xy[1:] - xy[:-1])).reshape(-1, 2)
        marks.append(axes.transData.transform(xy[np.isfinite(xy).all(axis=1)]))
    for collection in axes.collections:
        offsets = np.asarray(collection.get_offsets(), dtype=float)
        if len(offsets):
            marks.append(collection.get_offset_transform().transform(offsets))
    for patch in axes.patches:
        box = patch.get_window_extent()
        if box.width > 0 and box.height > 0:
            marks.append(np.array([[box.x0, box.y0], [box.x1, box.y1], [box.x0, box.y1], [box.x1, box.y0],
                                   [(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]]))
    return marks


def layout_faults(figure: Figure) -> list[str]:
    """What a reader sees wrong at a glance once the figure is laid out: a legend drawn over its axes'
    data, and a title or axis label running into another axes or its text (a title too long for
    its panel). Empty when there is nothing."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    faults = []
    for index, axes in enumerate(figure.axes):
        legend = axes.get_legend()
        if legend is None or not legend.get_visible():
            continue
        box = legend.get_window_extent(renderer)
        if any(((m[:, 0] > box.x0) & (m[:, 0] < box.x1) & (m[:, 1] > box.y0) & (m[:, 1] < box.y1)).any()
               for m in _marks(axes) if len(m)):
            faults.append(f"the legend of panel {index + 1} ({axes.get_title() or 'untitled'}) covers its data")
    texts = [(i, t) for i, axes in enumerate(figure.axes)
             for t in (axes.title, axes.xaxis.label, axes.yaxis.label) if t.get_visible() and t.get_text()]
    boxes = [(i, t, t.get_window_extent(renderer)) for i, t in texts]
    panels = [axes.get_window_extent(renderer) for axes in figure.axes]
    for i, text, box in boxes:
        others = [b for j, _, b in boxes if j != i] + [p for j, p in enumerate(panels) if j != i]
        # a title over a panel beside its own (same row: their heights overlap), though above both
        beside = [p for j, p in enumerate(panels) if j != i and text is figure.axes[i].title
                  and p.y0 < panels[i].y1 and panels[i].y0 < p.y1 and box.x0 < p.x1 and p.x0 < box.x1]
        if any(box.overlaps(other) for other in others) or beside:
            faults.append(f"\"{text.get_text()[:60]}\" (panel {i + 1}) runs into another panel")
    return faults
