"""The report figure: a corruption × severity accuracy heatmap per variant and before/after bars.

Built as a detached ``matplotlib.figure.Figure`` (:func:`rws.io.figures.new_figure`): no pyplot, so
no backend is ever selected; callers save it (:func:`rws.io.figures.save_figure`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rws.io.figures import new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from rws.robustness.variant import Variant


MAX_COLUMNS = 6  # heatmaps per row


def bar_metrics(v: Variant) -> dict[str, float]:
    """Label → accuracy for the before/after bars: clean, each corruption (mean over
    severities), the mean corruption accuracy and each robust accuracy."""
    out = {"clean": v.clean}
    out.update({c: v.severity_mean(c) for c in v.corruptions})
    if v.mean_corruption is not None:
        out["mean corr."] = v.mean_corruption
    out.update({f"robust {a}": acc for a, acc in v.robust.items()})
    return out


def _heatmap(ax: Axes, v: Variant, names: list[str], severities: list[int], first: bool) -> object:
    import numpy as np

    mat = np.array([[v.corruptions[c].get(s, np.nan) for s in severities] for c in names])
    im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_yticks(range(len(names)), names if first else [""] * len(names), fontsize=8)
    ax.set_xlabel("severity")
    ax.set_title(v.name, fontsize=10)
    if mat.size <= 40:
        for (r, c), val in np.ndenumerate(mat):
            colour = "white" if val < 0.6 else "black"
            ax.text(c, r, f"{100 * val:.0f}", ha="center", va="center", fontsize=7, color=colour)
    return im


def report_figure(variants: Sequence[Variant]) -> Figure:
    """A report's variants (the unpatched one first) as a figure: with corruptions, one accuracy
    heatmap (corruption × severity) per variant on top; below, grouped bars per metric of
    :func:`bar_metrics`, one bar per variant.

    Example:
        >>> fig = report_figure(report.variants)  # doctest: +SKIP
        >>> save_figure(fig, "report.png")  # doctest: +SKIP
    """
    import numpy as np

    base = variants[0]
    names = list(base.corruptions)
    severities = sorted({s for sev in base.corruptions.values() for s in sev})
    n = len(variants)
    has_heat = bool(names)
    cols = min(n, MAX_COLUMNS)  # heatmaps wrap onto rows of at most MAX_COLUMNS
    rows = -(-n // cols) if has_heat else 0
    legend_rows = -(-n // min(n, 4))
    fig = new_figure(max(8.0, 3.2 * cols), 2.9 * rows + 4.2 + 0.22 * legend_rows,
                     layout="constrained")  # fmt: skip
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [1.6])
    if has_heat:
        images = []
        for i, v in enumerate(variants):
            heat = fig.add_subplot(grid[i // cols, i % cols])
            images.append(_heatmap(heat, v, names, severities, i % cols == 0))
        fig.colorbar(images[-1], ax=fig.axes, shrink=0.8, label="accuracy")  # type: ignore[arg-type]
    ax = fig.add_subplot(grid[-1, :])
    labels = list(bar_metrics(base))
    width = 0.8 / n
    from matplotlib import colormaps

    colours = colormaps["tab10" if n <= 10 else "tab20"]  # distinct colours up to 20 variants
    for i, v in enumerate(variants):
        vals = bar_metrics(v)
        xs = np.arange(len(labels)) + (i - (n - 1) / 2) * width
        ax.bar(xs, [100 * vals[k] for k in labels], width, label=v.name, color=colours(i % 20))
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(n, 4))
    ax.set_title("before / after per corruption (mean over severities)", fontsize=10)
    if has_heat:
        fig.suptitle("accuracy (%) per corruption × severity", fontsize=11)
    return fig
