"""The CLI's two consoles: results on stdout, diagnostics and progress on stderr."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

__all__ = ["err", "out"]
