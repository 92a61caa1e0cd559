"""Element-wise patch arithmetic: ``add(w, d) = cast_w(compute(w) + d)`` and its inverse.

``compute`` is float32 (float64 for a float64 tensor). The inverse is plain subtraction,
``cast_w(compute(w') − d)``. Where ``|w + d|`` lands in a coarser binade than ``|w|``, rounding
drops low bits of ``w`` that no function of ``(w', d)`` can bring back, so a round trip is
bit-exact for most elements and within one rounding for the rest
(``tests/patching/test_arith.py`` measures both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

DecodeInto = Callable[[int, torch.Tensor], None]  # (start, out): fill out with delta elements


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype patch arithmetic runs in for a tensor of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def add_delta(w: torch.Tensor, d: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """The forward map ``cast_w(w + d)``, computed in ``d``'s dtype (``inplace`` reuses ``d``)."""
    s = d.add_(w) if inplace else d + w  # promotes w inside the kernel: same bits as w.to(d.dtype)
    return s.to(w.dtype)


def sub_delta(wp: torch.Tensor, d: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """The inverse map ``cast_w(w' − d)``, computed in ``d``'s dtype (``inplace`` reuses ``d``)."""
    s = d.neg_().add_(wp) if inplace else wp - d  # -d + wp == wp - d bit for bit
    return s.to(wp.dtype)


def exact_delta(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """``tuned − base`` in the compute dtype of ``base`` (exact wherever ``tuned`` and ``base`` are
    within a factor of two, by Sterbenz's lemma, so that applying it reproduces ``tuned``)."""
    cd = compute_dtype(base.dtype)
    return tuned.detach().to(cd) - base.detach().to(cd)


def all_finite(x: torch.Tensor) -> bool:
    """True when ``x`` holds no NaN or Inf. ``aminmax`` propagates NaN and shows ±Inf, in one
    pass with no mask tensor (about 20× faster than ``isfinite(x).all()`` on CPU)."""
    if not x.is_floating_point() or x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def patch_run(
    w: torch.Tensor,
    start: int,
    deltas: Sequence[tuple[DecodeInto, float]],
    acc: torch.Tensor,
    tmp: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    inverse: bool = False,
) -> bool:
    """Patch one run of a float32/float16/bfloat16 tensor's flat elements in ``w`` (or ``out``):
    elements ``start … start + len(w)``, bit for bit what ``ops.total_delta`` then
    :func:`add_delta` (or :func:`sub_delta`) give for them on the whole tensor, as the same
    element-wise operations in the same order. A run sized to stay in cache makes each pass over
    it cheap, and no whole-tensor float32 intermediate exists.

    Args:
        w: 1-D base elements (overwritten with the result when ``out`` is None).
        deltas: ``(decode_into, α)`` per patch: ``decode_into(start, buf)`` writes the float32
            delta elements (see :class:`rws.patching.codecs.RangeDecoder`).
        acc, tmp: float32 scratch of at least ``len(w)`` elements (``tmp`` only for 2+ deltas).

    Returns:
        True when every result element is finite.
    """
    n = w.numel()
    a = acc[:n]
    for i, (decode_into, alpha) in enumerate(deltas):
        if i == 0:
            decode_into(start, a)
            if alpha != 1.0:
                a.mul_(alpha)
            continue
        assert tmp is not None
        d = tmp[:n]
        decode_into(start, d)
        if alpha != 1.0:
            d.mul_(alpha)
        a.add_(d)
    if inverse:
        a.neg_()
    a.add_(w)  # promotes w inside the kernel, as add_delta/sub_delta do
    res = w if out is None else out
    res.copy_(a)  # the same rounding as .to(w.dtype)
    return all_finite(res)
