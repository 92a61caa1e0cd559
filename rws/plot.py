"""Plots written by the CLI (matplotlib, imported lazily, Agg backend, atomic writes)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Save a matplotlib figure atomically (temp file in the same folder, then rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    suffix = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(prefix=".plot.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot_layer_deltas(
    layers: Sequence[str], relative: Sequence[float], path: str | os.PathLike, title: str = ""
) -> None:
    """Bar chart of per-layer relative delta norms ‖δ‖/‖w‖ in depth order."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers)), 3.8))
    ax.bar(range(len(layers)), relative, color="#3b6ea5")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("‖δ‖ / ‖w‖")
    ax.set_xlabel("layer (depth order)")
    ax.set_title(title or "relative delta norm per layer")
    save_figure(fig, path)
    plt.close(fig)
