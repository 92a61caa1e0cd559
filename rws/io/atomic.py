"""Atomic file output: write to a temp file beside the target, fsync, rename into place.

A reader never sees a half-written file, a failed write leaves any previous file untouched, and
the result gets the permissions the umask gives a plain ``open`` (``mkstemp`` alone makes 0600).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from rws.errors import OutputPathError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path in ``path``'s folder; on a clean exit it is fsynced and renamed onto
    ``path``, on an exception it is deleted.

    Raises:
        OutputPathError: the folder does not exist.
    """
    target = os.fspath(path)
    folder = os.path.dirname(target) or "."
    if not os.path.isdir(folder):
        raise OutputPathError(target, "its folder does not exist")
    ext = os.path.splitext(target)[1]
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=f"{ext}.tmp", dir=folder
    )
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to ``path`` atomically."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
