"""Progress bars: one factory, on stderr, transient; off when asked, when ``RWS_NO_PROGRESS`` is
set (the CLI's ``--quiet`` sets it for its process) or when stderr is not a terminal."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

ENV_OFF = "RWS_NO_PROGRESS"


def progress_enabled(requested: bool = True) -> bool:
    """``requested``, unless ``RWS_NO_PROGRESS`` is set to anything but ``""``/``0``."""
    return requested and os.environ.get(ENV_OFF, "").strip() in ("", "0")


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None, *, enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """A rich progress bar for a block; yields ``advance(n=1)``.

    Example:
        >>> with progress_bar("epochs", 3, enabled=False) as advance:
        ...     for _ in range(3):
        ...         advance()
    """
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    show = progress_enabled(enabled) and console.is_terminal  # a pipe or a log gets no bar lines
    with Progress(console=console, transient=True, disable=not show) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: float = 1, **fields: object) -> None:
            bar.update(task, advance=n, **fields)  # type: ignore[arg-type]

        yield advance
