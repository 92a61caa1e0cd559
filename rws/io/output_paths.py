"""Checking every output of a command at once: each through
:func:`rws.io.checkpoint.check_output_path`, and no two on one path (``--out`` and ``--csv``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from rws.errors import OutputPathError
from rws.io.checkpoint import PathLike, Source, check_output_path


def check_output_paths(
    outputs: Mapping[str, PathLike | None], sources: Iterable[Source]
) -> dict[str, str]:
    """:func:`check_output_path` for each output of a command (``{"--out": path, "--csv":
    None, …}``; None: not asked for), and no two on one path. Returns the given ones.

    Raises:
        OutputPathError: an output is refused, or two outputs share a path.
    """
    sources, given, seen = list(sources), {}, {}
    for option, path in outputs.items():
        if path is None:
            continue
        given[option] = check_output_path(path, sources)
        real = os.path.realpath(path)
        if real in seen:
            raise OutputPathError(path, f"is given to both {seen[real]} and {option}")
        seen[real] = option
    return given
