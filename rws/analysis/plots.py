"""Plots: the per-layer relative delta norm profile (``rws diff --plot``) and similarity heatmaps
(``rws similarity --plot``). Each function builds and returns a ``Figure``; callers save it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from rws.io.figures import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rws.analysis.similarity import SimilarityResult


def plot_layer_deltas(layers: Sequence[str], relative: Sequence[float], title: str = "") -> Figure:
    """Bar chart of per-layer relative delta norms ‖δ‖/‖w‖ in depth order."""
    fig = new_figure(max(6.0, 0.35 * len(layers)), 3.8)
    ax = fig.subplots()
    ax.bar(range(len(layers)), relative, color="#3b6ea5")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("‖δ‖ / ‖w‖")
    ax.set_xlabel("layer (depth order)")
    ax.set_title(title or "relative delta norm per layer")
    return fig


def plot_similarity(result: SimilarityResult) -> Figure:
    """Heatmaps of ``result``: overall, then one panel per layer (values printed up to 10 labels).

    Args:
        result: the matrices from :func:`rws.analysis.similarity.similarity`.

    Returns:
        A detached figure; save it with :func:`rws.io.figures.save_figure`.
    """
    panels = [(f"overall ({len(result.tensors)} tensors)", result.overall)]
    panels += list(result.layers.items())
    n = len(result.labels)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    side = max(3.6, 0.45 * n + 1.6)
    fig = new_figure(side * cols, side * rows, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for k, (ax, (title, matrix)) in enumerate(zip(axes.flat, panels, strict=False)):
        image = ax.imshow(np.array(matrix), vmin=-1.0, vmax=1.0, cmap="RdBu_r")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        # labels once per row and per column of panels: beside or above a neighbour they would
        # overprint its cells
        last_in_column = k + cols >= len(panels)
        ax.set_xticklabels(result.labels if last_in_column else [], rotation=60, ha="right",
                           rotation_mode="anchor", fontsize=7)  # fmt: skip
        ax.set_yticklabels(result.labels if k % cols == 0 else [], fontsize=7)
        if n <= 10:
            for i in range(n):
                for j in range(n):
                    v = matrix[i][j]
                    color = "white" if abs(v) > 0.6 else "black"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7, label="cosine similarity")
    return fig
