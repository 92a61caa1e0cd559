"""Opening user-named files and folders with the one-line errors the CLI prints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from rws.errors import InputFileError


def open_input(path: str | os.PathLike) -> BinaryIO:
    """Open a file for binary reading; a missing or unreadable file raises ``InputFileError``."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a directory, not a file") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot be read ({exc.strerror or exc})") from None


def require_dir(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``, checked to be an existing directory."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputFileError(p, "no such directory")
    if not p.is_dir():
        raise InputFileError(p, "is a file, expected a directory")
    return p
