"""Element-wise patch arithmetic and its exact inverses.

The forward map is ``add(w, d) = cast_w(compute(w) + d)`` with ``compute`` = float32 (float64 for a
float64 tensor). Both inverses below pick, among the rounded result and its two neighbouring
representable values, one that the forward map sends exactly where it must, so that
extract→apply reproduces the tuned tensor and apply→remove restores the base bit for bit wherever a
representable solution exists (and within one rounding everywhere else).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype patch arithmetic runs in for a tensor of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def add_delta(w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The forward map ``cast_w(w + d)``, computed in ``d``'s dtype."""
    return (w.to(d.dtype) + d).to(w.dtype)


def _refine(
    candidate: torch.Tensor, good: torch.Tensor, test: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    best = candidate
    for toward in (float("-inf"), float("inf")):
        c = torch.nextafter(candidate, torch.full_like(candidate, toward))
        hit = ~good & test(c)
        best = torch.where(hit, c, best)
        good = good | hit
    return best


def sub_delta(wp: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Invert :func:`add_delta` in ``w``: a ``c`` near ``wp − d`` with ``add_delta(c, d) == wp``."""
    c0 = (wp.to(d.dtype) - d).to(wp.dtype)
    ok = add_delta(c0, d) == wp
    if bool(ok.all()):
        return c0
    return _refine(c0, ok, lambda c: add_delta(c, d) == wp)


def exact_delta(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """``tuned − base`` in the compute dtype, nudged so that ``add_delta(base, d) == tuned``."""
    cd = compute_dtype(base.dtype)
    b = base.detach().to(cd)
    t = tuned.detach().to(base.dtype)
    d0 = t.to(cd) - b
    ok = add_delta(base, d0) == t
    if bool(ok.all()):
        return d0
    return _refine(d0, ok, lambda d: add_delta(base, d) == t)
