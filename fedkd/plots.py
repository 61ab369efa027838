"""The one way fedkd draws a heatmap: confusion matrices and fusion weights look the same
in ``fedkd-report`` figures and in TensorBoard images.

matplotlib (Agg) only; ``STYLE`` holds the font sizes every figure uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

STYLE = {  # readable in a paper column at 100 % and in TensorBoard
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
}
ANNOTATE_UP_TO = 12  # classes / clients: cell values are printed up to this size
TICKS_UP_TO = 30  # every row and column is labelled up to this size
CONFUSION_AXES = ("predicted class", "true class")
CONFUSION_SCALE = "share of the true class"
FUSION_AXES = ("knowledge of client", "fused for client")
FUSION_SCALE = "fusion weight"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def heatmap(
    ax: Any,
    matrix: Any,
    *,
    xlabel: str,
    ylabel: str,
    labels: Sequence[str] | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "viridis",
    annotate: bool | None = None,
    fmt: str = "{:.2f}",
) -> Any:
    """Draw ``matrix`` on ``ax`` (rows top to bottom) and return the image for a colorbar.

    ``labels`` name rows and columns (default ``0..n-1`` up to ``TICKS_UP_TO``);
    ``annotate`` (default: up to ``ANNOTATE_UP_TO`` rows) prints each cell's value in a
    colour readable on its cell.
    """
    values = np.asarray(matrix, dtype=float)
    rows, cols = values.shape
    shown = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if labels is None and max(rows, cols) <= TICKS_UP_TO:
        labels = [str(i) for i in range(max(rows, cols))]
    if labels is not None:
        ax.set_xticks(range(cols), list(labels)[:cols])
        ax.set_yticks(range(rows), list(labels)[:rows])
    if annotate is None:
        annotate = max(rows, cols) <= ANNOTATE_UP_TO
    if annotate:
        size = 9 if max(rows, cols) <= 6 else 7
        for (row, col), value in np.ndenumerate(values):
            if not np.isfinite(value):
                continue
            dark = shown.cmap(shown.norm(value))[:3]
            light = sum(dark) / 3 > 0.5
            ax.text(
                col,
                row,
                fmt.format(value),
                ha="center",
                va="center",
                fontsize=size,
                color="black" if light else "white",
            )
    return shown


def draw_confusion(ax: Any, matrix: Any, title: str) -> Any:
    """A row-normalised confusion matrix (rows: true class) on a 0..1 scale."""
    ax.set_title(title)
    return heatmap(ax, matrix, xlabel=CONFUSION_AXES[0], ylabel=CONFUSION_AXES[1])


def draw_fusion_weights(ax: Any, matrix: Any, title: str) -> Any:
    """KnFu fusion weights (row: the client fused for; columns: whose knowledge), 0..1."""
    ax.set_title(title)
    return heatmap(ax, matrix, xlabel=FUSION_AXES[0], ylabel=FUSION_AXES[1], cmap="magma")
