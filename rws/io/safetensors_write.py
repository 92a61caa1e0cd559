"""Writing safetensors files as a stream, atomically.

``safetensors.save_file`` needs every tensor in memory at once. :class:`StreamWriter` instead
writes the header first (every offset follows from the declared shapes and dtypes), then each
tensor's bytes as they are produced (whole tensors, pieces of one, or ranges the kernel copies
from another file), from a writer thread, into a temporary file beside the output that is fsynced
and renamed into place only on a clean exit. It starts writeback every ``KICK`` bytes, so dirty
pages never pile up for the kernel to throttle the writer and the final fsync finds little to do.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import torch

from rws.errors import CheckpointError
from rws.io.atomic import atomic_output
from rws.io.safetensors_layout import dtype_code, nbytes, tensor_bytes


class StreamWriter:
    """Write a safetensors file tensor by tensor, atomically.

    Example:
        >>> spec = {"w": (torch.float32, (2, 2))}
        >>> with StreamWriter("out.safetensors", spec, {"k": "v"}) as w:  # doctest: +SKIP
        ...     w.write("w", torch.zeros(2, 2))
    """

    def __init__(
        self,
        path: str | os.PathLike,
        spec: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._order = list(spec)
        self._spec = {k: (dt, tuple(int(s) for s in shape)) for k, (dt, shape) in spec.items()}
        self._entries: dict[str, object] = {}
        offset = 0
        for name in self._order:
            dt, shape = self._spec[name]
            size = nbytes(dt, shape)
            self._entries[name] = {
                "dtype": dtype_code(dt),
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = _header_json(self._entries, metadata)
        raw += b" " * ((-len(raw)) % 8)
        self._header = struct.pack("<Q", len(raw)) + raw
        self._final: bytes | None = None
        self._next = 0
        self._fh = None

    def __enter__(self) -> StreamWriter:
        self._ctx = atomic_output(self.path)
        tmp = self._ctx.__enter__()
        self._fh = open(tmp, "wb", buffering=0)
        self._fh.write(self._header)
        # the bytes go out from a background thread (file writes release the GIL), so the next
        # tensor is computed while this one is written; at most BUDGET bytes (or one item) wait
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._room = threading.Condition()
        self._queued = 0
        self._error: BaseException | None = None
        self._left = 0  # bytes still due for the tensor begun last
        self._abort = False  # the caller failed: drop what is still queued
        self._thread = threading.Thread(target=self._drain, name="rws-writer", daemon=True)
        self._thread.start()
        return self

    BUDGET = 64 << 20  # bytes queued for the writer at most (or one item)
    KICK = 32 << 20  # start writing back to disk every KICK bytes

    def _drain(self) -> None:
        assert self._fh is not None
        fd, kicked, pos = self._fh.fileno(), 0, len(self._header)
        while (item := self._queue.get()) is not None:
            data, done, size = item
            if self._error is None and not self._abort:
                try:
                    if isinstance(data, tuple):
                        _copy_range(*data, fd)
                        pos += data[2]
                    else:
                        _write_all(fd, data)
                        pos += data.nbytes
                    if pos - kicked >= self.KICK and hasattr(os, "posix_fadvise"):
                        # Linux starts writing dirty pages back on DONTNEED (and keeps them):
                        # the final fsync has little left to do, and a large output never piles
                        # up enough dirty pages for the kernel to throttle this writer
                        os.posix_fadvise(fd, kicked, pos - kicked, os.POSIX_FADV_DONTNEED)
                        kicked = pos
                except BaseException as err:  # re-raised in the caller's thread
                    self._error = err
            if done is not None:
                done()
            with self._room:
                self._queued -= size
                self._room.notify_all()

    def set_metadata(self, metadata: Mapping[str, str] | None) -> None:
        """Replace the metadata, written over the header on a clean exit: its JSON may not be
        longer than the first one's (fixed-length placeholders allow values known only late)."""
        raw = _header_json(self._entries, metadata)
        room = len(self._header) - 8
        if len(raw) > room:
            raise RuntimeError("StreamWriter: the new metadata does not fit in the header")
        self._final = struct.pack("<Q", room) + raw + b" " * (room - len(raw))

    def begin(self, name: str) -> None:
        """Start the next tensor, whose bytes then come through :meth:`put`/:meth:`copy_from`."""
        if self._left:
            raise RuntimeError(f"StreamWriter: {self._order[self._next - 1]!r} is incomplete")
        if self._next >= len(self._order) or self._order[self._next] != name:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"StreamWriter: got {name!r}, expected {expected!r}")
        dt, shape = self._spec[name]
        self._left = nbytes(dt, shape)
        self._next += 1

    def put(self, data: memoryview, done: Callable[[], None] | None = None) -> None:
        """Queue the next bytes of the current tensor. ``data`` must stay valid until ``done`` runs
        (in the writer thread, once they are written or dropped after an error)."""
        self._enqueue(data, done, data.nbytes, data.nbytes)

    def copy_from(self, fd: int, offset: int, count: int, path: str = "") -> None:
        """Queue ``count`` bytes of the current tensor, copied from file ``fd`` (named ``path`` in
        errors) at ``offset``; in the kernel where the OS allows it, never through this process."""
        self._enqueue((fd, offset, count, path), None, count, 0)

    def _enqueue(self, data: _Data, done: Callable[[], None] | None, n: int, held: int) -> None:
        if n > self._left:
            raise RuntimeError(f"StreamWriter: {self._order[self._next - 1]!r} got too many bytes")
        if self._error is not None:
            raise self._error
        with self._room:  # back-pressure: wait while the writer has enough queued
            while self._queued and self._queued + held > self.BUDGET:
                self._room.wait()
            self._queued += held
        self._left -= n
        self._queue.put((data, done, held))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor; names must come in the declared order with the declared layout."""
        dt, shape = self._spec.get(name, (None, None))
        if dt is not None and (tensor.dtype != dt or tuple(tensor.shape) != shape):
            raise RuntimeError(
                f"StreamWriter: {name!r} is {tensor.dtype}{list(tensor.shape)}, "
                f"declared {dt}{list(shape or ())}"
            )
        self.begin(name)
        data = tensor_bytes(tensor)  # keeps the tensor's memory alive until written
        if data.nbytes:
            self.put(data)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._fh is not None
        self._abort = exc_type is not None
        self._queue.put(None)
        self._thread.join()
        if exc_type is None and self._error is None and self._final is not None:
            try:
                os.pwrite(self._fh.fileno(), self._final, 0)
            except OSError as err:
                self._error = err
        self._fh.close()
        if exc_type is None and self._error is not None:
            self._ctx.__exit__(type(self._error), self._error, None)  # deletes the temp file
            raise self._error
        if exc_type is None and (self._left or self._next != len(self._order)):
            missing = self._order[self._next - 1 if self._left else self._next]
            err = RuntimeError(f"StreamWriter: closed before tensor {missing!r} was written")
            self._ctx.__exit__(RuntimeError, err, None)  # deletes the temp file
            raise err
        self._ctx.__exit__(exc_type, exc, tb)  # renames into place, or deletes on error


def _header_json(entries: Mapping[str, object], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    header.update(entries)
    return json.dumps(header, separators=(",", ":")).encode()


_Data = memoryview | tuple[int, int, int, str]
_Item = tuple[_Data, Callable[[], None] | None, int]


def _write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data`` (one ``write`` call stops short past 2 GiB on Linux)."""
    data = data.cast("B") if data.ndim != 1 or data.format != "B" else data
    while data:
        data = data[os.write(fd, data) :]


def _copy_range(src: int, offset: int, count: int, path: str, dst: int) -> None:
    """Append ``count`` bytes of file ``src`` from ``offset`` to ``dst`` at its current position."""
    end = offset + count
    if hasattr(os, "copy_file_range"):
        try:
            while offset < end:
                got = os.copy_file_range(src, dst, end - offset, offset)
                if got <= 0:
                    break
                offset += got
        except OSError:  # not here (another filesystem, an old kernel): copy through memory
            pass
    buf = memoryview(bytearray(min(end - offset, COPY_BLOCK)))
    while offset < end:
        got = os.preadv(src, [buf[: end - offset]], offset)
        if got <= 0:
            raise CheckpointError(path, "file ended early (truncated?)")
        _write_all(dst, buf[:got])
        offset += got


COPY_BLOCK = 8 << 20


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a mapping of tensors atomically (temp file + fsync + rename)."""
    spec = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    with StreamWriter(path, spec, metadata) as w:
        for k, t in tensors.items():
            w.write(k, t)
