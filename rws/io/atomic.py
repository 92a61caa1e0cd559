"""Atomic file output: write to a temp file beside the target, fsync, rename into place.

A reader never sees a half-written file, a failed write leaves any previous file untouched, and
the result gets the permissions the umask gives a plain ``open`` (``mkstemp`` alone makes 0600).
Folders (:func:`atomic_folder`) the same way: a temp folder beside the target, renamed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
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


def is_folder_path(path: str | os.PathLike) -> bool:
    """An existing folder, or a path written as one (ending with a separator: ``out/``)."""
    text = os.fspath(path)
    return os.path.isdir(text) or text.endswith(("/", os.sep))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp folder beside ``path``; on a clean exit it is fsynced and renamed onto
    ``path`` (which may be missing or an empty folder), on an exception it is deleted.

    Raises:
        OutputPathError: the parent folder does not exist, or ``path`` is no longer empty.
    """
    target = os.path.normpath(os.fspath(path))
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise OutputPathError(target, "its folder does not exist")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _fsync_dir(tmp)
        try:
            os.replace(tmp, target)  # POSIX: onto a missing or empty folder only
        except OSError as err:
            raise OutputPathError(target, f"cannot be written ({err.strerror or err})") from None
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
