"""Plots of the recipes: module robust criticality and the α curve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rws.io.figures import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rws.recipes.alpha import AlphaCurve


def plot_mrc(modules: Sequence[str], values: Sequence[float], chosen: str = "") -> Figure:
    """Bar chart of module robust criticality in depth order, the least critical highlighted."""
    fig = new_figure(max(6.0, 0.4 * len(modules)), 3.8)
    ax = fig.subplots()
    colours = ["#c77c2e" if m == chosen else "#3b6ea5" for m in modules]
    ax.bar(range(len(modules)), values, color=colours)
    ax.set_xticks(range(len(modules)))
    ax.set_xticklabels(modules, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("MRC (adversarial loss increase)")
    ax.set_xlabel("module (depth order)")
    ax.set_title(f"module robust criticality; least critical: {chosen}" if chosen else "MRC")
    return fig


def plot_alpha_curve(curve: AlphaCurve, title: str = "") -> Figure:
    """Accuracy against α (clean, corrupted, robust), the chosen α marked."""
    from rws.recipes.alpha import METRICS

    fig = new_figure(6.0, 3.8)
    ax = fig.subplots()
    alphas = [p.alpha for p in curve.points]
    for key, colour in zip(METRICS, ("#3b6ea5", "#c77c2e", "#a53b3b"), strict=True):
        values = [getattr(p, key) for p in curve.points]
        if not all(math.isnan(v) for v in values):
            ax.plot(alphas, values, marker="o", color=colour, label=key)
    ax.axvline(
        curve.chosen.alpha, color="grey", linestyle="--", label=f"α = {curve.chosen.alpha:g}"
    )
    ax.set_xlabel("α")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "accuracy along W + α·δ")
    ax.legend(fontsize=8)
    return fig
