"""rws.io.figures: detached figures (no pyplot, no backend selected) written atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rws.io.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_PROBE = textwrap.dedent(
    """
    import json, sys
    import matplotlib
    if sys.argv[2] != "auto":
        matplotlib.use(sys.argv[2])  # what a notebook user may have chosen
    def backend():
        return dict.__getitem__(matplotlib.rcParams, "backend")  # never resolves "auto"
    before = str(backend())
    from rws.io.figures import new_figure, save_figure
    fig = new_figure(3, 2)
    fig.subplots().plot([0, 1], [1, 0])
    save_figure(fig, sys.argv[1])
    print(json.dumps({
        "pyplot": "matplotlib.pyplot" in sys.modules,
        "before": before,
        "after": str(backend()),
    }))
    """
)


@pytest.mark.parametrize("backend", ["auto", "svg"])
def test_new_figure_selects_no_backend(tmp_path: Path, backend: str) -> None:
    """In a fresh interpreter: building and saving a figure never imports pyplot nor changes
    (or, when none was chosen yet, resolves) matplotlib's backend."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = tmp_path / "probe.png"
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), backend],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert seen["pyplot"] is False
    assert seen["after"] == seen["before"]
    if backend == "svg":
        assert seen["after"] == "svg"
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_new_figure_size_and_kwargs() -> None:
    fig = new_figure(4.0, 2.5, dpi=50)
    assert tuple(fig.get_size_inches()) == (4.0, 2.5) and fig.dpi == 50
    assert fig.canvas.manager is None  # detached: no pyplot figure manager


def test_save_figure_is_atomic_png(tmp_path: Path) -> None:
    fig = new_figure(2, 2)
    fig.subplots().bar([0, 1], [1, 2])
    save_figure(fig, tmp_path / "bars.png")
    assert (tmp_path / "bars.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.png"]  # no temp file left
    save_figure(fig, tmp_path / "bars")  # no extension: PNG
    assert (tmp_path / "bars").read_bytes()[:8] == PNG_MAGIC
    save_figure(fig, tmp_path / "bars.svg")  # the extension picks the format
    assert b"<svg" in (tmp_path / "bars.svg").read_bytes()[:400]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars", "bars.png", "bars.svg"]


def test_save_figure_failure_leaves_nothing(tmp_path: Path) -> None:
    fig = new_figure(2, 2)
    with pytest.raises(ValueError, match="Format 'nope' is not supported"):
        save_figure(fig, tmp_path / "x.nope")
    assert list(tmp_path.iterdir()) == []
