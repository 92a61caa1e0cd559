"""rws.analysis.plots: each function returns a detached Figure; callers save it."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from rws.analysis.plots import plot_layer_deltas, plot_similarity
from rws.analysis.similarity import similarity
from rws.io.figures import save_figure
from tests.analysis.conftest import HandPatch


def test_plot_similarity_writes_a_png(tmp_path: Path, hand_patch: HandPatch) -> None:
    a = hand_patch("a", l1_weight=[[1.0, 0.0]], l2_weight=[[0.0, 2.0]])
    b = hand_patch("b", l1_weight=[[1.0, 1.0]], l2_weight=[[0.0, -2.0]])
    fig = plot_similarity(similarity([a, b]))
    assert len(fig.axes) == 4  # overall, layers l1 and l2, the colour bar
    rows = [[t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes[:3]]
    assert rows == [["a", "b"], ["", ""], ["", ""]]  # row labels once, not over a neighbour
    save_figure(fig, tmp_path / "sim.png")
    assert (tmp_path / "sim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sim.png"]  # no temp file left behind


def test_plot_layer_deltas_draws_one_bar_per_layer() -> None:
    fig = plot_layer_deltas(["conv1", "conv2", "fc"], [0.1, 0.2, 0.05])
    assert isinstance(fig, Figure) and fig.canvas.manager is None  # detached: no pyplot window
    (ax,) = fig.axes
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.1, 0.2, 0.05]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "conv2", "fc"]
    assert ax.get_title() == "relative delta norm per layer"
