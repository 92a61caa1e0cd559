"""Atomic file output: write to a temp file beside the target, fsync, rename into place.

A reader never sees a half-written file, a failed or interrupted write leaves any previous file
untouched and no temp file behind, and the result gets the permissions the umask gives a plain
``open`` (``mkstemp`` alone makes 0600). Folders (:func:`atomic_folder`) the same way: a temp
folder beside the target, renamed at the end.

Every target passes :func:`rws.io.outputs.check_output` first. Temp names are short (an output
name of up to 255 bytes stays writable) and carry the writer's process id:
``.<name, cut>.<tag>.<pid>.<random>.tmp``, ``tag`` naming the output. A process killed mid-write
(SIGKILL, power loss) leaves its temp file; the next write of the same output removes those whose
process is gone, and logs it. The operating system's refusals (read-only folder, disk full, file
too large, no inodes) become one-line :class:`~rws.errors.OutputFileError`\\ s naming the output.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator

from rws.errors import OutputFileError, OutputPathError, RwsError
from rws.io.outputs import check_output, own_temp

logger = logging.getLogger(__name__)

PREFIX_BYTES = 64  # bytes of the output's name kept in its temp name
_TEMP = re.compile(r"\..*\.(?P<tag>[0-9a-f]{8})\.(?P<pid>[0-9]+)\.[0-9a-f]{6}\.tmp\Z", re.DOTALL)
#: errors only a write causes (the output's disk, filesystem or limits)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
#: errors a write causes when they name the output or no file (``write()`` names none)
PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.EMLINK, errno.EXDEV}


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


def _tag(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def temp_name(target: str, pid: int | None = None) -> str:
    """A temp name for ``target`` in its folder: ``.<name, cut>.<tag>.<pid>.<random>.tmp`` (at
    most 64 + 31 bytes of name: within NAME_MAX whatever the output's length)."""
    name = os.path.basename(target)
    short = name.encode("utf-8", "surrogateescape")[:PREFIX_BYTES].decode("utf-8", "ignore")
    pid = os.getpid() if pid is None else pid
    return f".{short or 'out'}.{_tag(name)}.{pid}.{secrets.token_hex(3)}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or not a pid at all
        return True
    return True


def remove_stale(target: str) -> list[str]:
    """Remove the temp files (and folders) of earlier writes of ``target`` whose process is gone;
    log and return their paths."""
    folder = os.path.dirname(target) or "."
    tag, removed = _tag(os.path.basename(target)), []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            m = _TEMP.match(entry.name)
            if m is None or m["tag"] != tag or _alive(int(m["pid"])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.path)
                logger.warning(
                    "removed %s: a temp file of %s left by process %s, which is gone",
                    entry.path, target, m["pid"],
                )  # fmt: skip
    return removed


def output_error(err: BaseException, *paths: str) -> bool:
    """True for an ``OSError`` that writing ``paths`` caused (not an rws error, not an input's)."""
    if not isinstance(err, OSError) or isinstance(err, RwsError):
        return False
    if err.errno in WRITE_ERRNOS:
        return True
    if err.errno not in PATH_ERRNOS:
        return False
    if err.filename is None:
        return True
    name = os.path.realpath(err.filename)
    return any(name == p or name.startswith(p + os.sep) for p in map(os.path.realpath, paths))


def _translate(err: OSError, target: str) -> OutputFileError:
    reason = err.strerror or str(err)
    if err.errno == errno.EFBIG:
        reason += " (the file size limit, ulimit -f?)"
    return OutputFileError(target, f"cannot be written: {reason}; nothing was written")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path in ``path``'s folder; on a clean exit it is fsynced and renamed onto
    ``path``, on an exception (Ctrl-C, and SIGTERM/SIGHUP under the CLI) it is deleted.

    Raises:
        OutputPathError: the folder does not exist, or :func:`check_output` refuses ``path``.
        OutputFileError: the operating system refused the write (read-only, full, too large).
    """
    target = check_output(path, tracked=False)  # a link to a regular file is written through
    folder = os.path.dirname(target) or "."
    if not os.path.isdir(folder):
        raise OutputPathError(os.fspath(path), "its folder does not exist")
    remove_stale(target)
    tmp = os.path.join(folder, temp_name(target))
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise _translate(err, os.fspath(path)) from None
    own_temp(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        _fsync_dir(folder)
        logger.info("%s: written (%d bytes; temp file renamed into place)", target, _size(target))
    except OSError as err:
        if not output_error(err, tmp, target):
            raise
        raise _translate(err, os.fspath(path)) from None
    finally:
        own_temp(tmp, done=True)
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                os.unlink(tmp)


def _size(path: str) -> int:
    with contextlib.suppress(OSError):
        return os.path.getsize(path)
    return -1


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
        OutputPathError: the parent folder does not exist, ``path`` is no longer empty, or
            :func:`check_output` refuses it.
        OutputFileError: the operating system refused the write.
    """
    target = os.path.normpath(os.fspath(path))
    check_output(target, folder=True, tracked=False)
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise OutputPathError(target, "its folder does not exist")
    remove_stale(os.path.abspath(target))
    tmp = os.path.join(folder, temp_name(target))
    try:
        os.mkdir(tmp, 0o700)
    except OSError as err:
        raise _translate(err, target) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _fsync_dir(tmp)
        try:
            os.replace(tmp, target)  # POSIX: onto a missing or empty folder only
        except OSError as err:
            if output_error(err, tmp, target):
                raise
            raise OutputPathError(target, f"cannot be written ({err.strerror or err})") from None
        _fsync_dir(folder)
    except OSError as err:
        if not output_error(err, tmp, target):
            raise
        raise _translate(err, target) from None
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
