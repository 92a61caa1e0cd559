"""What every codec shares: the encoded form of a tensor (:class:`Encoded`) and its helpers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from rws.errors import CodecError
from rws.patching._readonly import ReadOnlyDict

SEP = "::"

__all__ = ["SEP", "Encoded", "RangeDecoder", "numel", "part"]


@dataclass(frozen=True)
class Encoded:
    """One tensor's encoded form, immutable.

    Attributes:
        codec: the codec's name.
        tensors: stored tensors by suffix (``""``: stored under the name); a plain dict is kept as
            a read-only copy, a lazy mapping (a file's parts) as it is.
        params: codec parameters (``blocksize``, ``rel_error`` …), a read-only copy.
    """

    codec: str
    tensors: Mapping[str, torch.Tensor]
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.tensors, dict) and not isinstance(self.tensors, ReadOnlyDict):
            object.__setattr__(self, "tensors", ReadOnlyDict(self.tensors))
        if not isinstance(self.params, ReadOnlyDict):
            object.__setattr__(self, "params", ReadOnlyDict(self.params))

    def nbytes(self) -> int:
        """Bytes the stored tensors take (from the file header when the parts are lazy)."""
        lazy = getattr(self.tensors, "nbytes", None)
        if lazy is not None:
            return int(lazy())
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def part(name: str, enc: Encoded, suffix: str) -> torch.Tensor:
    try:
        return enc.tensors[suffix]
    except KeyError:
        key = name + (SEP + suffix if suffix else "")
        raise CodecError(name, f"{enc.codec} data lacks stored tensor {key!r}") from None


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@dataclass
class RangeDecoder:
    """Decodes any run of a delta's flat elements into a caller's float32 buffer, bit for bit
    what :func:`rws.patching.codecs.decode` gives for them, so a tensor can be patched in cache-sized runs.

    ``decode_into(start, out)`` fills ``out`` (1-D) with elements ``start … start + len(out)``;
    ``start`` must be a multiple of ``align``, and so must ``len(out)`` unless the run ends the
    tensor.
    """

    align: int
    decode_into: Callable[[int, torch.Tensor], None]
