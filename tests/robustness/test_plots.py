"""The report figure (rws.robustness.plots): a detached Figure whose axes name the variants, built
without pyplot and without touching the matplotlib backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from matplotlib.figure import Figure

from rws.robustness.plots import bar_metrics, report_figure
from rws.robustness.report import Report
from tests.robustness.conftest import hand_report as _hand_report

ROOT = Path(__file__).resolve().parents[2]


def test_figure_axes_carry_the_variant_names() -> None:
    report = _hand_report()
    fig = report_figure(report.variants)
    assert isinstance(fig, Figure)
    heatmaps = [ax for ax in fig.axes if ax.get_xlabel() == "severity"]
    assert [ax.get_title() for ax in heatmaps] == ["base", "fog@0.8"]
    assert [t.get_text() for t in heatmaps[0].get_yticklabels()] == ["fog"]
    bars = next(ax for ax in fig.axes if ax.get_ylabel() == "accuracy (%)")
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["base", "fog@0.8"]
    assert [t.get_text() for t in bars.get_xticklabels()] == list(bar_metrics(report.base))
    assert list(bar_metrics(report.base)) == ["clean", "fog", "mean corr.", "robust pgd"]
    heights = [p.get_height() for p in bars.patches]
    assert heights[:4] == [75.0, 37.5, 37.5, 25.0]  # base: clean, fog (mean of 50, 25), …


def test_without_corruptions_only_the_bars() -> None:
    d = _hand_report().to_dict()
    for v in d["variants"]:
        v["corruptions"], v["mean_corruption"] = {}, None
    fig = Report.from_dict(d).figure()
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "accuracy (%)"


def test_no_pyplot_and_no_backend_change() -> None:
    code = (
        "import sys, matplotlib; before = matplotlib.get_backend()\n"
        "from tests.robustness.conftest import hand_report\n"
        "fig = hand_report().figure()\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert matplotlib.get_backend() == before\n"
        "print('ok')\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=env)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
