"""Where rws may write and what it may read: the one output check, and the input-file check.

Every output (checkpoints, patches, plots, CSV, JSON, cards, copies) goes through
:func:`check_output`: :func:`rws.io.atomic.atomic_output` and :func:`~rws.io.atomic.atomic_folder`
call it on every write, and the commands call it before any work (through
:func:`rws.io.checkpoint.check_output_path`, which adds their inputs). An output is refused when

* it is an input of the command: one given, or (checked before any work) a file read so far
  inside :func:`track_inputs` (the CLI tracks each command; readers report with
  :func:`note_input`): a sharded checkpoint's index and shards, a patch, a pickle;
* it exists and is not a regular file or folder (a device node, FIFO, socket, or a link to one),
  is a dangling link, or lies under ``/dev``, ``/proc`` or ``/sys``: a rename would replace the
  node itself;
* it lies inside the Hugging Face cache (its blobs are shared and verified by content).

Inputs go through :func:`check_input_file`: a FIFO or device would block or never end.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from rws.errors import InputFileError, InputKindError, OutputPathError

_tracked: ContextVar[set[str] | None] = ContextVar("rws_tracked_inputs", default=None)
_own_temps: set[str] = set()  # temp paths this process is writing (never a user's input)
SYSTEM_DIRS = ("/dev", "/proc", "/sys")


@contextlib.contextmanager
def track_inputs() -> Iterator[set[str]]:
    """Within the block, every file a reader opens is an input that no output may replace."""
    token = _tracked.set(set())
    try:
        yield _tracked.get() or set()
    finally:
        _tracked.reset(token)


def note_input(path: str | os.PathLike) -> None:
    """Record ``path`` as read by the current command (no-op outside :func:`track_inputs`)."""
    seen = _tracked.get()
    if seen is not None:
        seen.add(os.path.realpath(path))


def own_temp(path: str, *, done: bool = False) -> None:
    """Mark (or, ``done``, unmark) a temp path this process writes: it may be read and rewritten
    in place (``apply --recalibrate-bn`` reads its own temp output)."""
    (_own_temps.discard if done else _own_temps.add)(os.path.realpath(path))


def kind_of(mode: int) -> str:
    """A file type's name: ``"FIFO (named pipe)"``, ``"character device"`` …"""
    kinds = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"),
             (stat.S_ISLNK, "symbolic link"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "special file")


def check_input_file(path: str | os.PathLike) -> str:
    """Refuse an input that is missing or not a regular file (a FIFO would block forever, a
    device never end); record it as an input. Returns the path as a string.

    Raises:
        InputFileError: missing or unreadable.
        InputKindError: a FIFO, device, socket or folder.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputFileError(p, "no such file") from None
    except OSError as err:
        raise InputFileError(p, f"cannot read ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputKindError(p, f"is a {kind_of(st.st_mode)}, not a regular file")
    note_input(p)
    return p


def hf_cache_dirs() -> list[str]:
    """The Hugging Face hub cache folders in effect (resolved): huggingface_hub's setting, and
    what ``HF_HUB_CACHE`` / ``HF_HOME`` / ``XDG_CACHE_HOME`` say now."""
    from huggingface_hub import constants

    env = os.environ
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    found = [constants.HF_HUB_CACHE, env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")]
    found.append(os.path.join(os.path.expanduser(home), "hub"))
    return sorted({os.path.realpath(os.path.expanduser(d)) for d in found if d})


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output(
    path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    *,
    folder: bool = False,
    tracked: bool = True,
) -> str:
    """Refuse ``path`` as an output (see the module docstring); return the resolved path to
    write (a link to a regular file is written through: the link stays).

    ``inputs``: files (and folders) of the command besides those already tracked; ``folder``:
    the output is a folder (an existing folder is then allowed); ``tracked``: the files read so
    far in :func:`track_inputs` count as inputs (the commands' check before any work; the
    atomic writers pass False: a training checkpoint resumed from is rewritten in place).

    Raises:
        OutputPathError: an input, a special file, a system path, or inside the Hugging Face cache.
    """
    given = os.fspath(path)
    real = os.path.realpath(given)
    absolute = os.path.abspath(given)
    if any(_inside(p, d) for p in (real, absolute) for d in SYSTEM_DIRS):
        raise OutputPathError(given, "is a system path; rws writes regular files only")
    if real not in _own_temps:
        taken = {os.path.realpath(p) for p in inputs} | ((tracked and _tracked.get()) or set())
        if real in taken:
            raise OutputPathError(given, "is also an input; write to another path")
    if os.path.lexists(given):
        try:
            mode = os.stat(given).st_mode
        except FileNotFoundError:
            raise OutputPathError(given, "is a link to a missing file; remove it first") from None
        except OSError as err:
            raise OutputPathError(given, f"cannot be checked ({err.strerror or err})") from None
        if not (stat.S_ISREG(mode) or (folder and stat.S_ISDIR(mode))):
            kind = kind_of(mode)
            raise OutputPathError(given, f"is a {kind}; rws writes regular files only")
    for cache in hf_cache_dirs():
        if _inside(real, cache):
            raise OutputPathError(
                given, f"is inside the Hugging Face cache ({cache}); write it elsewhere"
            )
    return real
