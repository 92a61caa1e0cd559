"""Which codec stores which tensor: mixed precision by default, globs to override.

The patch's codec applies to weight matrices and kernels. A 1-D tensor (biases, norm scales,
BatchNorm running statistics) or one of fewer than :data:`SMALL_NUMEL` elements costs little to
keep and a lot to get wrong (a quantized running variance can go negative), so it is kept in high
precision: ``fp16`` where the delta survives float16 within its unit roundoff (``‖fp16(δ) − δ‖ ≤
2⁻¹¹‖δ‖``, no overflow) and a running variance stays positive; otherwise ``fp32``. A lossless patch
(``codec="fp32"``) stays fp32 throughout. Small tensors are never sparsified.

``codec_map`` overrides per tensor: ``"bn*=fp32,layer1.*=int8"`` or ``{"bn*": "fp32"}``; the first
glob that matches a name wins, and every glob must match some tensor of the patch. The key
``:small`` (:data:`SMALL_KEY`) matches the small tensors, whatever their names: ``":small=int8"``
stores them in int8 instead of fp16/fp32. Even then a
lossy codec on a running variance that would make it ``<= 0`` where the exact delta does not is
replaced by fp32 (logged), so no codec produces an invalid BatchNorm state.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from rws.errors import UsageError
from rws.patching import codecs
from rws.patching.codecs import Encoded

logger = logging.getLogger(__name__)

SMALL_NUMEL = 256  # below this many elements, a tensor is kept in high precision
SMALL_KEY = ":small"  # codec_map key: every small tensor (1-D, or below SMALL_NUMEL elements)
KEEP = "keep"  # plan entry: fp16 where exact enough, else fp32
LOSSLESS = "fp32"
_FP16_REL = 2.0**-11  # float16's unit roundoff: the relative error of a normal number
_FP16_MAX = 65504.0

CodecMapSpec = str | Mapping[str, str] | Sequence[tuple[str, str]] | None


def parse_codec_map(spec: CodecMapSpec) -> list[tuple[str, str]]:
    """``"glob=codec,glob=codec"`` (or a mapping, or pairs) as checked ``(glob, codec)`` pairs.

    Raises:
        UsageError: an entry without ``=``, an empty glob.
        UnknownNameError: an unknown codec.

    Example:
        >>> parse_codec_map("bn*=fp32, layer1.*=int8")
        [('bn*', 'fp32'), ('layer1.*', 'int8')]
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        pairs = []
        for item in (i.strip() for i in spec.split(",")):
            glob, eq, codec = item.partition("=")
            if not eq or not glob.strip() or not codec.strip():
                raise UsageError(f"--codec-map entry {item!r}: write GLOB=CODEC, e.g. 'bn*=fp32'")
            pairs.append((glob.strip(), codec.strip()))
    else:
        pairs = list(spec.items()) if isinstance(spec, Mapping) else [tuple(p) for p in spec]
    for glob, codec in pairs:
        if not isinstance(glob, str) or not glob:
            raise UsageError(f"--codec-map glob {glob!r}: give a tensor-name glob")
        codecs.get_codec(codec)  # UnknownNameError listing the codecs
    return [(g, c) for g, c in pairs]


def is_small(shape: Sequence[int]) -> bool:
    """1-D (or 0-D) or fewer than :data:`SMALL_NUMEL` elements."""
    return len(shape) <= 1 or math.prod(shape) < SMALL_NUMEL


@dataclass(frozen=True)
class CodecPlan:
    """The codec of each tensor: ``codec`` for the large ones, :data:`KEEP` for small ones (unless
    ``codec`` is fp32), ``overrides`` (glob, codec) first."""

    codec: str = LOSSLESS
    overrides: Sequence[tuple[str, str]] = field(default_factory=tuple)

    @classmethod
    def of(cls, codec: str = LOSSLESS, codec_map: CodecMapSpec = None) -> CodecPlan:
        """A plan from a codec and a ``codec_map`` spec (checked)."""
        codecs.get_codec(codec)
        return cls(codec, tuple(parse_codec_map(codec_map)))

    def choose(self, name: str, shape: Sequence[int]) -> str:
        """The codec (or :data:`KEEP`) for tensor ``name``."""
        for glob, c in self.overrides:
            if is_small(shape) if glob == SMALL_KEY else fnmatch.fnmatchcase(name, glob):
                return c
        if self.codec != LOSSLESS and is_small(shape):
            return KEEP
        return self.codec

    def check(
        self, names: Sequence[str], shapes: Mapping[str, Sequence[int]] | None = None
    ) -> None:
        """Every override glob matches one of ``names`` (the patch's tensors); :data:`SMALL_KEY`
        matches one of ``shapes`` (not checked without them).

        Raises:
            UsageError: a glob that matches no tensor.
        """
        for glob, _ in self.overrides:
            if glob == SMALL_KEY:
                if shapes is not None and not any(is_small(s) for s in shapes.values()):
                    raise UsageError(
                        f"--codec-map {SMALL_KEY!r} matches no tensor of the patch (none is 1-D "
                        f"or below {SMALL_NUMEL} elements)"
                    )
            elif not any(fnmatch.fnmatchcase(n, glob) for n in names):
                raise UsageError(f"--codec-map glob {glob!r} matches no tensor of the patch")


def high_precision(name: str, delta: torch.Tensor, base: torch.Tensor) -> str:
    """``fp16`` when ``delta`` survives float16 within its unit roundoff (in norm, no overflow) and
    a running variance stays positive; else ``fp32``."""
    if bool((delta.abs() > _FP16_MAX).any()):
        return LOSSLESS
    half = delta.half().float()
    if float((half - delta).norm()) > _FP16_REL * float(delta.norm()):  # many subnormals
        return LOSSLESS
    if _is_running_var(name) and not _valid_var(base, delta, half):
        return LOSSLESS
    return "fp16"


def _is_running_var(name: str) -> bool:
    return name.endswith("running_var")


def _valid_var(base: torch.Tensor, exact: torch.Tensor, coded: torch.Tensor) -> bool:
    """No element positive with the exact delta and ``<= 0`` with the coded one (then every
    α in [0, 1] keeps it positive too: w + α·δ is between w and w + δ)."""
    w = base.detach().to(torch.float32)
    return not bool(((w + exact > 0) & (w + coded <= 0)).any())


def encode_tensor(
    name: str,
    delta: torch.Tensor,
    base: torch.Tensor | None,
    plan: CodecPlan,
    *,
    blocksize: int = codecs.DEFAULT_BLOCKSIZE,
    sparsify: str | None = None,
    density: float = 1.0,
    seed: int = 0,
) -> Encoded:
    """Encode one float32 delta as ``plan`` says (see the module doc). Without the ``base`` (a
    composition), a running variance is kept exact (fp32) unless a glob names its codec, and
    then only checked to be finite.

    Raises:
        UsageError: an integer tensor, a codec that cannot hold the delta, bad sparsity.
    """
    if base is None:
        base = torch.full(delta.shape, math.inf)  # no base: every coded value counts as valid
        if _is_running_var(name) and plan.choose(name, tuple(delta.shape)) == KEEP:
            return codecs.encode(name, delta, LOSSLESS)
    if not (base.is_floating_point() or base.is_complex()):
        raise UsageError(
            f"tensor {name!r} is an integer buffer ({str(base.dtype).removeprefix('torch.')}); "
            "no codec stores it (integer buffers are never patched): --exclude it"
        )
    choice = plan.choose(name, tuple(base.shape))
    small = is_small(tuple(base.shape))
    if choice == KEEP:
        return codecs.encode(name, delta, high_precision(name, delta, base))
    sp = None if small else sparsify
    enc = codecs.encode(
        name, delta, choice, blocksize=blocksize, sparsify=sp, density=density, seed=seed
    )
    lossy = choice != LOSSLESS or sp is not None
    if lossy and _is_running_var(name):
        back = codecs.decode(name, enc, tuple(delta.shape))
        if not _valid_var(base, delta, back):
            logger.warning("%s: %s would make a running variance <= 0; kept fp32", name, choice)
            return codecs.encode(name, delta, LOSSLESS)
    return enc
