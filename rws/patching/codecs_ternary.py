"""The ternary codec (``ternary``): each element one of ``{-a, 0, +a}``, one ``a`` per row.

A row is an output channel (the first dimension) of a tensor of two or more dimensions, or the
whole tensor when it is 1-D. Per row, the kept set and ``a`` minimise the L2 error exactly: with
the magnitudes sorted in decreasing order, ``s_1 >= s_2 >= …``, keeping the ``k`` largest with
``a = (s_1 + … + s_k) / k`` leaves a squared error of ``‖x‖² − (s_1 + … + s_k)² / k``, so ``k`` is
the one that maximises ``(s_1 + … + s_k)² / k`` (ties of magnitude are broken by position). This is
the optimum that Ternary Weight Networks (Li & Liu, 2016) approximate with the threshold
``0.7·mean|x|``; rws computes it instead of approximating it.

Stored as plain tensors:

- ``NAME::q``: the codes ``t + 1`` (``t`` in ``{-1, 0, 1}``), five to a byte in base 3
  (``c0 + 3·c1 + 9·c2 + 27·c3 + 81·c4``, at most 242): ``ceil(n / 5)`` uint8, 1.6 bits an element;
- ``NAME::scale``: ``a`` per row, bfloat16 (float32's range, so no delta underflows it).

Decoding is ``t · float32(a)``, one rounding, the same bits every time.
"""

from __future__ import annotations

import torch

from rws.errors import CodecError
from rws.patching.codec_types import Encoded, RangeDecoder, numel, part

_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)
_DIGITS = 5
_CHUNK = 1 << 22  # elements ternarised at once (about 150 MiB of sort buffers)


def rows_of(shape: tuple[int, ...]) -> int:
    """How many scales a tensor of ``shape`` stores: its first dimension, 1 for 0-D and 1-D."""
    return shape[0] if len(shape) >= 2 else 1


def ternarize(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The L2-optimal ternary form of each row of a 2-D float32 tensor: ``(t, a)`` with ``t`` in
    ``{-1, 0, 1}`` (int8, the rows' shape) and ``a`` (float32, one per row).

    Example:
        >>> t, a = ternarize(torch.tensor([[3.0, -2.9, 0.1, 0.0]]))
        >>> t.tolist(), a.tolist()
        ([[1, -1, 0, 0]], [2.950000047683716])
    """
    mag = rows.abs()
    order = mag.argsort(dim=1, descending=True, stable=True)
    csum = mag.gather(1, order).to(torch.float64).cumsum(dim=1)
    k = torch.arange(1, rows.shape[1] + 1, dtype=torch.float64)
    best = (csum * csum / k).argmax(dim=1, keepdim=True)  # index of the last kept element
    a = (csum.gather(1, best) / (best + 1)).squeeze(1).to(torch.float32)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(rows.shape[1]).expand_as(order))
    keep = (rank <= best) & (mag > 0)
    t = (torch.sign(rows) * keep).to(torch.int8)
    return t, a


class TernaryCodec:
    """``{-a, 0, +a}`` per element, ``a`` per output channel, 1.6 bits an element (see the module
    doc). Not blockwise: the block size does not apply."""

    name = "ternary"
    suffixes = ("q", "scale")
    blockwise = False

    def encode(self, name: str, x: torch.Tensor, blocksize: int) -> Encoded:
        shape = tuple(x.shape)
        rows = x.reshape(rows_of(shape), -1).to(torch.float32)
        if rows.shape[1] == 0:
            empty = torch.zeros(0, dtype=torch.uint8)
            return Encoded(self.name, {"q": empty, "scale": torch.zeros(rows.shape[0]).bfloat16()})
        step = max(1, _CHUNK // rows.shape[1])  # rows at a time: the sort's int64 copies stay small
        parts = [ternarize(rows[i : i + step]) for i in range(0, rows.shape[0], step)]
        t = torch.cat([p[0] for p in parts]).reshape(-1)
        a = torch.cat([p[1] for p in parts])
        return Encoded(self.name, {"q": pack(t), "scale": a.to(torch.bfloat16)})

    def decode(self, name: str, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        q, scale = self._parts(name, enc, shape)
        n, r = numel(shape), rows_of(shape)
        if n == 0:
            return torch.zeros(shape)
        out = unpack(name, q, n).to(torch.float32).reshape(r, -1)
        return out.mul_(scale[:, None]).reshape(shape)

    def ranges(self, name: str, enc: Encoded, shape: tuple[int, ...]) -> RangeDecoder:
        """Runs starting at a multiple of 5 (a byte's first code): ``t · a`` of each element's
        row, the same single rounding as :meth:`decode`."""
        q, scale = self._parts(name, enc, shape)
        row = max(1, numel(shape) // rows_of(shape))  # elements per scale

        def decode_into(start: int, out: torch.Tensor) -> None:
            k = out.numel()
            t = unpack(name, q[start // _DIGITS : -(-(start + k) // _DIGITS)], k)
            rows = torch.arange(start, start + k) // row
            torch.mul(t.to(torch.float32), scale[rows], out=out)

        return RangeDecoder(_DIGITS, decode_into)

    def _parts(
        self, name: str, enc: Encoded, shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The codes (flat uint8) and the scales as float32, checked against ``shape``."""
        q, scale = part(name, enc, "q"), part(name, enc, "scale")
        n, r = numel(shape), rows_of(shape)
        if q.dtype != torch.uint8 or scale.dtype != torch.bfloat16:
            raise CodecError(name, "ternary data has the wrong dtypes (uint8 codes, bf16 scales)")
        if q.numel() != -(-n // _DIGITS) or scale.numel() != r:
            raise CodecError(
                name, f"ternary data holds {q.numel()} code bytes / {scale.numel()} scales"
            )
        return q.reshape(-1), scale.to(torch.float32)


def pack(t: torch.Tensor) -> torch.Tensor:
    """Ternary digits (int8 in {-1, 0, 1}, 1-D) packed five to a byte in base 3."""
    c = (t.to(torch.int32) + 1).reshape(-1)
    c = torch.nn.functional.pad(c, (0, (-c.numel()) % _DIGITS))
    return (c.view(-1, _DIGITS) * _POW3).sum(dim=1).to(torch.uint8)


def unpack(name: str, q: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` digits (int8 in {-1, 0, 1}) of packed bytes.

    Raises:
        CodecError: a byte above 242 (no five base-3 digits make it).
    """
    v = q.to(torch.int32)
    if bool((v > 242).any()):
        raise CodecError(name, "ternary data holds a byte above 242")
    digits = (v[:, None] // _POW3) % 3
    return (digits.reshape(-1)[:n] - 1).to(torch.int8)
