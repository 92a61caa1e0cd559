"""Figures: the library builds ``matplotlib.figure.Figure`` objects (no pyplot, so no backend is
ever selected: a notebook keeps its own) and writes them atomically."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from rws.io.atomic import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float, **kwargs: Any) -> Figure:
    """A detached ``Figure`` of ``width`` × ``height`` inches (matplotlib imported lazily)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), **kwargs)


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> None:
    """Save ``fig`` atomically; the format follows the file extension (``.png`` by default)."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
