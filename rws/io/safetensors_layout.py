"""The safetensors byte layout shared by the reader and the writer: dtype codes, tensor sizes, a
tensor's raw little-endian bytes."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from rws.errors import UsageError

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
_ITEMSIZE: dict[torch.dtype, int] = {}


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code (``"F32"`` …) of a torch dtype."""
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise UsageError(f"dtype {dtype} cannot be stored in safetensors") from None


def nbytes(dtype: torch.dtype, shape: Iterable[int]) -> int:
    """Bytes taken by a tensor of ``dtype`` and ``shape``."""
    size = _ITEMSIZE.get(dtype)
    if size is None:
        size = _ITEMSIZE[dtype] = torch.empty((), dtype=dtype).element_size()
    return math.prod(shape) * size


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A zero-copy little-endian byte view of a CPU tensor (copies only if not contiguous)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")
