"""The safetensors byte layout, read lazily and written as a stream.

``safetensors.save_file`` needs every tensor in memory at once. :class:`StreamWriter` instead
writes the header first (every offset follows from the declared shapes and dtypes), then each
tensor's bytes as they are produced (whole tensors, pieces of one, or ranges the kernel copies
from another file), from a writer thread, into a temporary file beside the output that is fsynced
and renamed into place only on a clean exit. It starts writeback every ``KICK`` bytes, so dirty
pages never pile up for the kernel to throttle the writer and the final fsync finds little to do.

:class:`TensorFile` reads one tensor (or part of one) at a time with plain positioned reads (not
mmap: touched pages of a mapped file count towards the process's resident memory until it closes,
so streaming a 2 GiB file through mmap would hold 2 GiB). The header is validated as strictly as
the safetensors library does (dtypes, shapes, contiguous offsets without holes or overlaps, exact
file size), with one-line messages for the common failures (truncation, Git LFS pointers).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from rws.errors import CheckpointError, InputFileError, UsageError
from rws.io.atomic import atomic_output

DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
CODE_DTYPES: dict[str, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code (``"F32"`` …) of a torch dtype."""
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise UsageError(f"dtype {dtype} cannot be stored in safetensors") from None


def nbytes(dtype: torch.dtype, shape: Iterable[int]) -> int:
    """Bytes taken by a tensor of ``dtype`` and ``shape``."""
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A zero-copy little-endian byte view of a CPU tensor (copies only if not contiguous)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


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


MAX_HEADER = 100 << 20  # the safetensors library's limit


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """Read and validate a safetensors header; return it and the byte offset where data starts.

    Raises:
        InputFileError: the file cannot be read.
        CheckpointError: truncated, not safetensors, a Git LFS pointer, or an inconsistent header.
    """
    p = os.fspath(path)
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(p, "too short to be a safetensors file (truncated?)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > MAX_HEADER:
                if (head + fh.read(120)).startswith(b"version https://git-lfs"):
                    raise CheckpointError(
                        p, "this is a Git LFS pointer, not weights; run `git lfs pull`"
                    )
                raise CheckpointError(p, "header length exceeds the file size (truncated?)")
            raw = fh.read(n)
    except OSError as err:
        raise InputFileError(p, f"cannot read ({err.strerror or err})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(p, "the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(p, "the safetensors header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(p, "__metadata__ must map strings to strings")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = CODE_DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(p, f"tensor {name!r} has a malformed header entry") from None
        if any(s < 0 for s in shape) or end - start != nbytes(dtype, shape):
            raise CheckpointError(
                p, f"tensor {name!r}: its offsets do not match its shape and dtype"
            )
        spans.append((start, end, name))
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            what = "overlaps the previous one" if start < pos else "leaves a hole before it"
            raise CheckpointError(p, f"tensor {name!r} {what}")
        pos = end
    if 8 + n + pos != size:
        raise CheckpointError(
            p, f"holds {size} bytes but its header describes {8 + n + pos} (truncated?)"
        )
    return header, 8 + n


class TensorFile:
    """A safetensors file read one tensor at a time (positioned reads)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        header, self._start = read_header(self.path)
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", {}) or {})
        order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
        self._info = {k: header[k] for k in order}
        self._fd = os.open(self.path, os.O_RDONLY)

    def keys(self) -> list[str]:
        """Tensor names in storage order."""
        return list(self._info)

    def __contains__(self, name: object) -> bool:
        return name in self._info

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._info))

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return CODE_DTYPES[self._info[name]["dtype"]]

    def nbytes(self, name: str) -> int:
        start, end = self._info[name]["data_offsets"]
        return int(end) - int(start)

    def span(self, name: str) -> tuple[int, int]:
        """Where a tensor's bytes lie in the file: (offset, length)."""
        start, end = (int(o) for o in self._info[name]["data_offsets"])
        return self._start + start, end - start

    def fileno(self) -> int:
        """The open file descriptor (positioned reads only: it has no meaningful position)."""
        return self._fd

    def read_into(self, name: str, offset: int, out: memoryview) -> None:
        """Read ``len(out)`` bytes of a tensor, from byte ``offset`` of its data, into ``out``."""
        base, size = self.span(name)
        if offset < 0 or offset + out.nbytes > size:
            raise ValueError(f"bytes {offset}+{out.nbytes} are outside tensor {name!r}")
        done = 0
        while done < out.nbytes:
            got = os.preadv(self._fd, [out[done:]], base + offset + done)
            if got <= 0:
                raise CheckpointError(self.path, f"tensor {name!r}: file ended early (truncated?)")
            done += got

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into fresh memory."""
        buf = torch.empty(self.nbytes(name), dtype=torch.uint8)
        if buf.numel():
            self.read_into(name, 0, memoryview(buf.numpy()))
        return buf.view(self.dtype(name)).reshape(self.shape(name))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
