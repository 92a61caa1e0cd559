"""Reading safetensors files one tensor at a time, with a strictly validated header.

:class:`TensorFile` reads one tensor (or part of one) at a time with plain positioned reads (not
mmap: touched pages of a mapped file count towards the process's resident memory until it closes,
so streaming a 2 GiB file through mmap would hold 2 GiB). The header is validated as strictly as
the safetensors library does (dtypes, shapes, contiguous offsets without holes or overlaps, exact
file size), with one-line messages for the common failures (truncation, Git LFS pointers).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from typing import Any

import torch

from rws.errors import CheckpointError, InputFileError, MalformedInputError
from rws.io.json_read import loads_strict
from rws.io.outputs import check_input_file
from rws.io.safetensors_layout import CODE_DTYPES, nbytes

MAX_HEADER = 100 << 20  # the safetensors library's limit
CACHED_HEADER = 32 << 20  # the last few validated headers up to this size are kept
_RECENT: dict[tuple[str, int, int, int, int], tuple[dict[str, Any], int]] = {}  # validated headers


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """Read and validate a safetensors header; return it and the byte offset where data starts.

    Raises:
        InputFileError: the file cannot be read.
        InputKindError: not a regular file (a FIFO, a device).
        CheckpointError: truncated, not safetensors, a Git LFS pointer, or an inconsistent header
            (duplicate keys, dims or offsets that are not integers, overlaps, holes).
    """
    p = check_input_file(path)
    try:
        st = os.stat(p)
    except OSError as err:
        raise InputFileError(p, f"cannot read ({err.strerror or err})") from None
    key = (os.path.realpath(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _RECENT:  # a file read twice by one command (is it a patch? then open it)
        header, start = _RECENT[key]
        return dict(header), start
    header, start = _read_header(p, st.st_size)
    if start <= CACHED_HEADER:
        while len(_RECENT) >= 4:
            _RECENT.pop(next(iter(_RECENT)))
        _RECENT[key] = header, start
    return dict(header), start


def _read_header(p: str, size: int) -> tuple[dict[str, Any], int]:
    try:
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
        header = loads_strict(raw, p, "the safetensors header")
    except MalformedInputError as e:
        raise CheckpointError(p, e.reason) from None
    if not isinstance(header, dict):
        raise CheckpointError(p, "the safetensors header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(p, "__metadata__ must map strings to strings")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end, why = _entry(info)
        if why:
            raise CheckpointError(p, f"tensor {name!r} has a malformed header entry: {why}")
        if end - start != nbytes(CODE_DTYPES[info["dtype"]], info["shape"]):
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


def _counts(values: object) -> bool:
    """A list of non-negative integers (not bools, floats or strings)."""
    return type(values) is list and all(type(v) is int and v >= 0 for v in values)


def _entry(info: object) -> tuple[int, int, str]:
    """A header entry's data offsets, or why the entry is malformed."""
    if type(info) is not dict or "shape" not in info or "data_offsets" not in info:
        return 0, 0, "a header entry needs dtype, shape and data_offsets"
    dtype = info.get("dtype")
    if type(dtype) is not str or dtype not in CODE_DTYPES:
        return 0, 0, f"unknown dtype {str(dtype)[:20]!r}"
    shape, offsets = info["shape"], info["data_offsets"]
    if not _counts(shape):
        return 0, 0, f"shape {str(shape)[:40]} is not a list of non-negative integers"
    if not _counts(offsets) or len(offsets) != 2:
        return 0, 0, f"data_offsets {str(offsets)[:40]} are not two non-negative integers"
    return offsets[0], offsets[1], ""


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
        """A tensor's shape, from the header."""
        return tuple(self._info[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        """A tensor's dtype, from the header."""
        return CODE_DTYPES[self._info[name]["dtype"]]

    def nbytes(self, name: str) -> int:
        """A tensor's stored bytes, from the header."""
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
        """Close the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
