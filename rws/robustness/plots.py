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


MAX_COLUMNS = 5  # heatmaps per row: 5 × 3 in at the 120 dpi of save_figure, under 2,000 px
PANEL_WIDTH = 3.0  # inches per heatmap


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
    fig = new_figure(max(8.0, PANEL_WIDTH * cols), 2.6 * rows + 4.2 + 0.22 * legend_rows,
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


def _curves(variants: Sequence[Variant]) -> dict[str, list[tuple[float, Variant]]]:
    """Single-patch variants grouped by the patch's fingerprint: label → [(α·scale, variant)]
    sorted by α, starting at the unpatched model (α = 0); groups of one point are left out."""
    groups: dict[str, list[tuple[float, Variant]]] = {}
    labels: dict[str, str] = {}
    for v in variants[1:]:
        if len(v.patches) != 1 or not v.patches[0].get("fingerprint"):
            continue
        p = v.patches[0]
        groups.setdefault(p["fingerprint"], []).append((p["alpha"] * p["scale"], v))
        labels.setdefault(p["fingerprint"], p["name"].split("@")[0])
    return {
        labels[k]: [(0.0, variants[0]), *sorted(g, key=lambda t: t[0])]
        for k, g in groups.items()
        if len({a for a, _ in g}) > 1
    }


def summary_figure(variants: Sequence[Variant]) -> Figure:
    """The trade-off a user decides on, compactly: clean accuracy (x) against the mean corrupted
    accuracy (y), one point per variant (named in the legend); a patch evaluated at several α is
    a line from the unpatched model (α = 0) through its α values, each marked with its α.

    Args:
        variants: a report's variants, the unpatched one first; they need corruptions.

    Example:
        >>> save_figure(summary_figure(report.variants), "summary.png")  # doctest: +SKIP
    """
    from matplotlib import colormaps

    fig = new_figure(9.0, 5.6, layout="constrained")
    ax = fig.subplots()
    curves = _curves(variants)
    colours = colormaps["tab10" if len(variants) <= 10 else "tab20"]
    drawn = set()
    for i, (label, points) in enumerate(curves.items()):
        xs = [100 * v.clean for _, v in points]
        ys = [100 * (v.mean_corruption or 0.0) for _, v in points]
        ax.plot(xs, ys, "-o", color=colours(i % 20), lw=1.4, ms=4, label=f"{label} (α = 0 → 1)")
        for k, ((a, v), x, y) in enumerate(zip(points[1:], xs[1:], ys[1:], strict=True)):
            ax.annotate(f"α={a:g}", (x, y), xytext=(5, 4 if k % 2 else -10), fontsize=7,
                        textcoords="offset points", color=colours(i % 20))  # fmt: skip
            drawn.add(v.name)
    markers = "sD^vPXh<>p"
    rest = [v for v in variants[1:] if v.mean_corruption is not None and v.name not in drawn]
    base = variants[0]
    if base.mean_corruption is not None:
        ax.plot(100 * base.clean, 100 * base.mean_corruption, "*", ms=13, color="black",
                zorder=4, label=f"{base.name} (unpatched)")  # fmt: skip
    for j, v in enumerate(rest):
        ax.plot(100 * v.clean, 100 * (v.mean_corruption or 0.0), markers[j % len(markers)], ms=7,
                color=colours((len(curves) + j) % 20), zorder=3, label=v.name)  # fmt: skip
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("mean corrupted accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("clean vs mean corrupted accuracy per variant (up and right is better)",
                 fontsize=10)  # fmt: skip
    return fig
