"""Exact Poisson sampling of ``Poisson(c·x)`` for images ``x`` in [0, 1], by table inversion.

``torch.poisson`` draws one rate at a time (a product of uniforms below rate 10, a rejection
sampler above). Here every rate is split as ``c·x = c·v + r``: ``v`` the largest 8-bit level
``k/255`` (as the input's dtype holds it) not above ``x``, and ``r ≥ 0`` the rest, zero for 8-bit
images. ``Poisson(c·v)`` is read off a per-level CDF table by inversion of one uniform; the rest,
where there is any, is an independent ``Poisson(r)`` added on (Poisson rates add), by sequential
inversion (``r < c/255`` is small). Both parts are exact in distribution (to double precision).

The inversion draws an integer ``a`` uniform in ``[0, 2²⁴)`` and stands for the uniform
``u = (a + v)/2²⁴`` with ``v`` uniform in [0, 1), drawn only where it matters: the sample is
``#{k : F(k) ≤ u}``, decided by ``a`` alone unless a CDF value falls inside ``[a, a + 1)/2²⁴``
(a few in a million). A table of 2¹² cells per level holds the answer for every cell that no CDF
value crosses; the others walk the CDF from the cell's start.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from rws.robustness.corruptions import _rng
from rws.robustness.corruptions._linear import chunks

LEVELS = 256
_BITS = 24  # bits of the integer uniform ``a``
_CELL_BITS = 12  # 2¹² cells per level in the lookup table
_SCALE = float(1 << _BITS)


@lru_cache(maxsize=32)
def _tables(
    c: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(levels, cells, cdf, K)`` for rate ``c``.

    ``levels``: ``(256,)`` the values ``k/255`` in ``dtype``. ``cells``: flat ``(256·2¹²,)`` in
    ``dtype``: for an ``a`` in cell ``m`` the sample divided by ``c``, ``#{k : cdf_k ≤ a}/c``,
    when no CDF value lies in the cell, else ``-1 -`` that count (negative). ``cdf``: flat
    ``(256·K,)`` float64, ``2²⁴·P(X ≤ k)`` for ``X ~ Poisson(c·level)``, the last of each row set to
    ``2²⁴`` (the tail beyond ``K`` is below 1e-19).
    """
    levels = torch.arange(LEVELS, dtype=dtype) / (LEVELS - 1)
    lam = levels.to(torch.float64)[:, None] * c
    size = math.ceil(c + 10.0 * math.sqrt(c) + 16.0)
    k = torch.arange(size, dtype=torch.float64)
    logp = k * torch.log(lam) - lam - torch.lgamma(k + 1.0)
    logp[0] = torch.where(k == 0, 0.0, -math.inf)  # rate 0: always 0
    cdf = torch.exp(logp).cumsum(1).mul_(_SCALE).clamp_(max=_SCALE)  # rounding: stay sorted
    cdf[:, -1] = _SCALE
    width = float(1 << (_BITS - _CELL_BITS))
    edges = torch.arange((1 << _CELL_BITS) + 1, dtype=torch.float64) * width
    lo = torch.searchsorted(cdf, edges[:-1].expand(LEVELS, -1).contiguous(), right=True)
    hi = torch.searchsorted(cdf, edges[1:].expand(LEVELS, -1).contiguous(), right=False)
    cells = torch.where(lo == hi, lo.to(dtype) / c, -1.0 - lo.to(dtype))
    return levels.to(device), cells.reshape(-1).to(device), cdf.reshape(-1).to(device), size


def _walk(cdf: torch.Tensor, pos: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Advance each flat table index in ``pos`` while ``cdf[pos] ≤ threshold`` (rows end at 2²⁴)."""
    active = torch.arange(pos.numel(), device=pos.device)
    while active.numel():
        step = cdf[pos[active]] <= threshold[active]
        active = active[step]
        pos[active] += 1
    return pos


def poisson_div(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    """``Poisson(c·x) / c`` per element of ``x`` (values in [0, 1]), as ``x``'s dtype and device.

    The uniform's integer ``a = 2¹²·m + l`` is drawn in two parts: the cell ``m`` for every
    element, the low bits ``l`` only where the cell is crossed by a CDF value. The table lookups
    stream through the batch in cache-sized chunks; every draw is made for the whole batch at once,
    so chunking changes no result.
    """
    levels, cells, cdf, size = _tables(float(c), x.dtype, x.device)
    flat = x.reshape(-1)
    ncell = 1 << _CELL_BITS
    m = _rng.randint((flat.numel(),), g, x.device, 0, ncell, dtype=torch.int32)
    out = torch.empty_like(flat)
    rest = None  # x - level, where x is off the 8-bit grid
    crossed, crossed_q = [], []
    for s in chunks(flat.view(-1, 1)):
        xs = flat[s]
        q = xs.mul(LEVELS - 1).round_().to(torch.int32)
        level = levels.index_select(0, q)
        if not torch.equal(level, xs):  # off the grid: the level below, the rest added at the end
            q.sub_((level > xs).to(torch.int32))
            rest = torch.zeros_like(flat) if rest is None else rest
            torch.sub(xs, levels.index_select(0, q), out=rest[s])
        torch.index_select(cells, 0, torch.add(m[s], q, alpha=ncell), out=out[s])
        hit = torch.nonzero(out[s] < 0).squeeze(1)
        crossed.append(hit + s.start)
        crossed_q.append(q.index_select(0, hit))
    idx = torch.cat(crossed)
    if idx.numel():
        low = _rng.randint((idx.numel(),), g, x.device, 0, 1 << (_BITS - _CELL_BITS))
        a = (m[idx].long() << (_BITS - _CELL_BITS)).add_(low).double()
        base = torch.cat(crossed_q).long() * size
        pos = _walk(cdf, base + (-1.0 - out[idx]).long(), a)
        tie = torch.nonzero(cdf[pos] < a + 1.0).squeeze(1)  # the uniform's remaining bits decide
        if tie.numel():
            v = _rng.uniform((tie.numel(),), g, a)
            pos[tie] = _walk(cdf, pos[tie], a[tie] + v)
        out[idx] = (pos - base).to(x.dtype) / c
    if rest is not None:  # add Poisson(c·(x - level)); x - level is exact (Sterbenz), 0 on the grid
        out.add_(_poisson_small(rest.double().mul_(c), g).to(x.dtype).div_(c))
    return out.view(x.shape)


def _poisson_small(rate: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``Poisson(rate)`` for small float64 rates (here below ``c/255``), by sequential inversion of
    one float64 uniform each: ``#{k : P(X ≤ k) ≤ u}``; most draws stop at 0."""
    u = _rng.uniform(tuple(rate.shape), g, rate)
    cdf = torch.exp(-rate)  # P(X ≤ 0)
    out = torch.zeros_like(rate)
    idx = torch.nonzero(u >= cdf).squeeze(1)  # X ≥ 1
    u, lam, cdf = u[idx], rate[idx], cdf[idx]
    p, k = cdf.clone(), 0
    while idx.numel():
        k += 1
        p = p * lam / k  # P(X = k)
        cdf = cdf + p
        out[idx] = float(k)
        # stop at u < P(X ≤ k); a vanished term cannot move the CDF (the tail is below 1e-300)
        more = torch.nonzero((u >= cdf) & (p > 0)).squeeze(1)
        idx, u, lam, cdf, p = idx[more], u[more], lam[more], cdf[more], p[more]
    return out
