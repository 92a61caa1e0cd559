"""Plots of deltas: the per-layer relative norm profile (``rws diff --plot``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rws.io.figures import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
