"""Sparsified deltas: keep a ``density`` share of a tensor's elements, store where they are.

Two ways to choose the kept elements, applied per tensor before the codec:

- ``topk``: the ``k = round(density·n)`` largest magnitudes (ties broken by position).
- ``dare``: each element kept independently with probability ``density`` (a seeded generator per
  tensor), the kept ones rescaled by ``1/density`` so that the delta is unchanged in expectation
  (DARE, drop and rescale).

The kept values are coded with the patch's codec as a 1-D tensor of ``k`` values, and their
positions are stored beside them as plain ``uint8`` tensors, whichever is smaller:

- ``NAME::mask``: one bit per element (bit ``i % 8`` of byte ``i // 8``), ``ceil(n/8)`` bytes;
- ``NAME::gaps``: the gaps between kept positions, each written as ``m`` bytes of 255 followed
  by one byte ``< 255`` (gap ``= 255·m + last``), about ``k`` bytes at densities above 1/128.

Decoding scatters the decoded values back; it is exact: the same bytes give the same tensor, and
the patch's ``rel_error`` is measured on that tensor against the dense delta.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import torch

from rws.errors import CodecError, UsageError

Sparsify = Literal["topk", "dare"]
SPARSIFIERS: tuple[str, ...] = ("topk", "dare")
POSITION_SUFFIXES = ("mask", "gaps")


def check_density(density: float) -> float:
    """``density`` as a float in (0, 1].

    Raises:
        UsageError: outside (0, 1] or not a finite number.
    """
    if isinstance(density, bool) or not isinstance(density, int | float):
        raise UsageError(f"--density {density!r}: give a number in (0, 1]")
    d = float(density)
    if not (0.0 < d <= 1.0):  # NaN fails too
        raise UsageError(f"--density {density!r}: must be in (0, 1]")
    return d


def check_method(method: str) -> str:
    """A known sparsifier name.

    Raises:
        UsageError: not ``topk`` or ``dare``.
    """
    if method not in SPARSIFIERS:
        raise UsageError(f"--sparsify {method!r}: choose one of: {', '.join(SPARSIFIERS)}")
    return method


def select(
    name: str, x: torch.Tensor, method: str, density: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept positions (int64, ascending) and their values (float32) of the flat delta.

    Example:
        >>> pos, val = select("w", torch.tensor([0.1, -3.0, 0.5, 2.0]), "topk", 0.5)
        >>> pos.tolist(), val.tolist()
        ([1, 3], [-3.0, 2.0])
    """
    check_method(method)
    flat = x.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    if method == "topk":
        k = max(1, min(n, round(density * n)))
        order = torch.sort(flat.abs(), descending=True, stable=True).indices
        pos = torch.sort(order[:k]).values
        return pos, flat[pos]
    g = torch.Generator().manual_seed(_tensor_seed(name, seed))
    keep = torch.rand(n, generator=g) < density
    if not keep.any():  # keep at least the largest element: a stored tensor is never empty
        keep[flat.abs().argmax()] = True
    pos = keep.nonzero().reshape(-1)
    return pos, flat[pos] / density


def _tensor_seed(name: str, seed: int) -> int:
    """A per-tensor seed: the patch's seed mixed with the tensor's name (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def pack_positions(pos: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """The smaller of a bit mask and gap bytes for ascending positions ``pos`` in ``range(n)``.

    Example:
        >>> pack_positions(torch.tensor([0, 9]), 16)["mask"].tolist()
        [1, 2]
    """
    gaps = torch.diff(pos, prepend=torch.tensor([-1])) - 1  # (k,) >= 0
    if math.ceil(n / 8) <= int((gaps // 255).sum()) + pos.numel():
        bits = torch.zeros(math.ceil(n / 8) * 8, dtype=torch.uint8)
        bits[pos] = 1
        weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
        return {"mask": (bits.view(-1, 8) * weights).sum(1).to(torch.uint8)}
    full = gaps // 255  # escape bytes before each gap's last byte
    out = torch.full((int(full.sum()) + pos.numel(),), 255, dtype=torch.uint8)
    ends = torch.cumsum(full + 1, 0) - 1  # where each gap's last byte goes
    out[ends] = (gaps - 255 * full).to(torch.uint8)
    return {"gaps": out}


def unpack_positions(
    name: str, parts: dict[str, torch.Tensor], n: int, k: int | None = None
) -> torch.Tensor:
    """Ascending positions (int64) from :func:`pack_positions`' output, checked to lie in
    ``range(n)`` (and to be ``k``, when given).

    Raises:
        CodecError: missing, malformed, or not ``k`` positions inside ``range(n)``.
    """
    if "mask" in parts:
        mask = parts["mask"]
        if mask.dtype != torch.uint8 or mask.numel() != math.ceil(n / 8):
            raise CodecError(name, f"sparse mask holds {mask.numel()} bytes for {n} elements")
        shifts = torch.arange(8, dtype=torch.uint8)
        bits = (mask.reshape(-1, 1) >> shifts) & 1  # (bytes, 8)
        pos = bits.reshape(-1).nonzero().reshape(-1)
    elif "gaps" in parts:
        b = parts["gaps"]
        if b.dtype != torch.uint8 or b.dim() != 1:
            raise CodecError(name, "sparse gaps are not a 1-D uint8 tensor")
        last = (b < 255).nonzero().reshape(-1)
        pos = torch.cumsum(b.to(torch.int64), 0)[last] + torch.arange(last.numel())
        if b.numel() and b[-1] == 255:
            raise CodecError(name, "sparse gaps end in an escape byte")
    else:
        raise CodecError(name, "sparse data lacks its positions (::mask or ::gaps)")
    if (k is not None and pos.numel() != k) or pos.numel() == 0 or int(pos[-1]) >= n:
        raise CodecError(name, f"sparse data holds {pos.numel()} positions for {n} elements")
    return pos


def scatter(pos: torch.Tensor, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A new float32 tensor of ``shape``: ``values`` at flat ``pos``, zero elsewhere."""
    out = torch.zeros(math.prod(shape), dtype=torch.float32)
    out[pos] = values.reshape(-1).to(torch.float32)
    return out.reshape(shape)
