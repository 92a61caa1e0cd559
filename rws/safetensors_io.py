"""The safetensors byte layout, read lazily and written as a stream.

``safetensors.save_file`` needs every tensor in memory at once. :class:`StreamWriter` instead
writes the header first (every offset follows from the declared shapes and dtypes), then each
tensor's bytes as it is produced, into a temporary file beside the output that is fsynced and
renamed into place only on a clean exit. Reads go through ``safe_open`` (mmap), one tensor at a time.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import torch

from rws.errors import OutputPathError, UsageError

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
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for name in self._order:
            dt, shape = self._spec[name]
            size = nbytes(dt, shape)
            header[name] = {
                "dtype": dtype_code(dt),
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)
        self._header = struct.pack("<Q", len(raw)) + raw
        self._next = 0
        self._tmp: Path | None = None
        self._fh = None

    def __enter__(self) -> StreamWriter:
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise OutputPathError(self.path, "its folder does not exist")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb", buffering=0)
        self._fh.write(self._header)
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor; names must come in the declared order with the declared layout."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"StreamWriter: got {name!r}, expected {expected!r}")
        dt, shape = self._spec[name]
        if tensor.dtype != dt or tuple(tensor.shape) != shape:
            raise RuntimeError(
                f"StreamWriter: {name!r} is {tensor.dtype}{list(tensor.shape)}, "
                f"declared {dt}{list(shape)}"
            )
        assert self._fh is not None
        self._fh.write(tensor_bytes(tensor))
        self._next += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._fh is not None and self._tmp is not None
        try:
            if exc_type is None and self._next != len(self._order):
                missing = self._order[self._next]
                raise RuntimeError(f"StreamWriter: closed before tensor {missing!r} was written")
            if exc_type is None:
                os.fsync(self._fh.fileno())
        except BaseException:
            self._fh.close()
            self._tmp.unlink(missing_ok=True)
            raise
        self._fh.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
            _fsync_dir(self.path.parent)
        else:
            self._tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder if str(folder) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
