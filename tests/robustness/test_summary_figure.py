"""The report figure's width with many variants, and the summary figure: clean against mean
corrupted accuracy per variant, a patch measured at several α drawn as a line from α = 0."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image

from rws.io.figures import save_figure
from rws.robustness.plots import MAX_COLUMNS, report_figure, summary_figure
from rws.robustness.variant import Variant
from tests.robustness.conftest import hand_report


def _variants(n_patches: int) -> list[Variant]:
    """The unpatched model, then each of ``n_patches`` patches at α = 0.5 and 1, and one
    composition: 2·n + 2 variants, accuracies made up but distinct."""
    base = hand_report().variants[0]
    out = [base]
    for k in range(n_patches):
        for alpha in (0.5, 1.0):
            patch = {"name": f"c{k}.rws", "alpha": alpha, "scale": 1.0,
                     "fingerprint": f"{k:064x}", "source": ""}  # fmt: skip
            acc = 0.25 + 0.05 * k + 0.1 * alpha
            name = f"c{k}.rws" + ("" if alpha == 1 else f"@{alpha:g}")
            cells = {"fog": {1: acc, 2: acc}}
            out.append(dataclasses.replace(base, name=name, patches=[patch], clean=0.9 - alpha / 10,
                                           corruptions=cells, mean_corruption=acc))  # fmt: skip
    both = {"name": "all.rws", "alpha": 1.0, "scale": 1.0, "fingerprint": "f" * 64, "source": ""}
    out.append(dataclasses.replace(base, name="all.rws", patches=[both], clean=0.7,
                                   mean_corruption=0.6))  # fmt: skip
    return out


def test_many_heatmaps_wrap_under_2000_pixels() -> None:
    fig = report_figure(_variants(5))  # 12 variants (the demo has 18: 1809 × 1897 px)
    heatmaps = [ax for ax in fig.axes if ax.get_xlabel() == "severity"]
    assert len(heatmaps) == 12 and MAX_COLUMNS == 5
    rows = sorted({round(ax.get_subplotspec().rowspan.start) for ax in heatmaps})
    assert rows == [0, 1, 2]  # 5 + 5 + 2
    width, height = fig.get_size_inches() * 120  # save_figure's dpi
    assert width <= 1850 and height <= 1600, (width, height)


def test_summary_draws_the_alpha_curves_and_every_variant(tmp_path: Path) -> None:
    variants = _variants(2)
    fig = summary_figure(variants)
    (ax,) = fig.axes
    curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
    assert [ln.get_label() for ln in curves] == ["c0.rws (α = 0 → 1)", "c1.rws (α = 0 → 1)"]
    xs, ys = curves[1].get_xdata(), curves[1].get_ydata()
    assert list(xs) == [75.0, 85.0, 80.0]  # base (α = 0), α = 0.5, α = 1: clean accuracy in %
    assert [round(y, 6) for y in ys] == [37.5, 35.0, 40.0]  # mean corrupted accuracy in %
    alphas = [t.get_text() for t in ax.texts]
    assert alphas == ["α=0.5", "α=1", "α=0.5", "α=1"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[2:] == ["base (unpatched)", "all.rws"]  # points off the curves are named
    save_figure(fig, tmp_path / "summary.png")
    width, height = Image.open(tmp_path / "summary.png").size
    assert width <= 1200 and height <= 800, (width, height)
