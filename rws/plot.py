"""Plots written by the CLI (matplotlib, imported lazily, Agg backend, atomic writes)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from rws.atomic import atomic_output


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Save a matplotlib figure atomically (format from the file extension)."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=fmt)


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


def plot_mrc(
    modules: Sequence[str], values: Sequence[float], path: str | os.PathLike, chosen: str = ""
) -> None:
    """Bar chart of module robust criticality in depth order, the least critical highlighted."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.4 * len(modules)), 3.8))
    colours = ["#c77c2e" if m == chosen else "#3b6ea5" for m in modules]
    ax.bar(range(len(modules)), values, color=colours)
    ax.set_xticks(range(len(modules)))
    ax.set_xticklabels(modules, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("MRC (adversarial loss increase)")
    ax.set_xlabel("module (depth order)")
    ax.set_title(f"module robust criticality; least critical: {chosen}" if chosen else "MRC")
    save_figure(fig, path)
    plt.close(fig)
