"""Linear filters on batches ``(B, C, H, W)``: border modes, Gaussian, 2-D kernels, motion lines.

Border modes (names after ``numpy.pad``): ``"edge"`` (scipy/skimage ``nearest``, cv2
``BORDER_REPLICATE``), ``"symmetric"`` (scipy ``reflect``: d c b a | a b c d) and ``"reflect"``
(scipy ``mirror``, cv2 ``BORDER_REFLECT_101``: d c b | a b c d). Padding is done by index, so a
kernel may be wider than the image.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from rws.robustness.corruptions._linear import apply_axes, apply_axes_sum, chunks

Border = Literal["edge", "symmetric", "reflect"]


def pad_index(n: int, before: int, after: int, mode: Border, device: torch.device) -> torch.Tensor:
    """Source indices ``(before + n + after,)`` into an axis of length ``n`` for a border mode."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "edge" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "symmetric":
        m = i.remainder(2 * n)
        return torch.where(m >= n, 2 * n - 1 - m, m)
    m = i.remainder(2 * n - 2)  # reflect (101)
    return torch.where(m >= n, 2 * n - 2 - m, m)


def pad(x: torch.Tensor, ph: int, pw: int, mode: Border) -> torch.Tensor:
    """Pad the last two axes by ``ph`` rows and ``pw`` columns on each side."""
    h, w = x.shape[-2:]
    if ph:
        x = x.index_select(-2, pad_index(h, ph, ph, mode, x.device))
    if pw:
        x = x.index_select(-1, pad_index(w, pw, pw, mode, x.device))
    return x


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy's sampled Gaussian: radius ``int(truncate·σ + 0.5)``, sum 1 (σ ≤ 0: ``[1]``)."""
    if sigma <= 1e-15:
        return np.ones(1)
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * t * t / (sigma * sigma))
    return k / k.sum()


@lru_cache(maxsize=128)
def _border_matrix(n: int, kernel: tuple[float, ...], mode: Border) -> np.ndarray:
    """``(n, n)`` matrix of a 1-D correlation with ``kernel`` (odd length) and a border mode;
    cached, so callers must not modify it."""
    r = len(kernel) // 2
    src = pad_index(n, r, r, mode, torch.device("cpu")).numpy()
    m = np.zeros((n, n))
    rows = np.arange(n)
    for j, kj in enumerate(kernel):
        np.add.at(m, (rows, src[rows + j]), kj)
    return m


_MATRIX_MAX_SIDE = 128  # up to this side a banded matmul beats conv2d with one channel on CPU


def separable(x: torch.Tensor, kh: np.ndarray, kw: np.ndarray, mode: Border) -> torch.Tensor:
    """Correlate the last two axes with 1-D kernels ``kh`` (rows) and ``kw`` (columns)."""
    b, c, h, w = x.shape
    if max(h, w) <= _MATRIX_MAX_SIDE:
        mh = _border_matrix(h, tuple(np.asarray(kh, dtype=np.float64).tolist()), mode)
        mw = _border_matrix(w, tuple(np.asarray(kw, dtype=np.float64).tolist()), mode)
        return apply_axes(x, mh, mw)
    y = x.reshape(b * c, 1, h, w)
    if kh.size > 1:
        r = kh.size // 2
        wt = torch.as_tensor(kh, dtype=x.dtype, device=x.device).view(1, 1, -1, 1)
        y = F.conv2d(pad(y, r, 0, mode), wt)
    if kw.size > 1:
        r = kw.size // 2
        wt = torch.as_tensor(kw, dtype=x.dtype, device=x.device).view(1, 1, 1, -1)
        y = F.conv2d(pad(y, 0, r, mode), wt)
    return y.reshape(b, c, h, w)


def gaussian(
    x: torch.Tensor, sigma: float, mode: Border = "edge", truncate: float = 4.0
) -> torch.Tensor:
    """``skimage.filters.gaussian`` per channel (scipy ``gaussian_filter``, mode ``nearest``)."""
    k = gaussian_kernel1d(sigma, truncate)
    return separable(x, k, k, mode)


def gaussian_symmetric_fft(
    x: torch.Tensor, sigma: float | tuple[float, float], truncate: float = 4.0
) -> torch.Tensor:
    """Gaussian filter, scipy's ``reflect`` border, exact for any σ (even wider than the image).

    ``sigma``: one σ, or ``(σ_rows, σ_cols)``. The symmetric extension of a length-``n`` axis is
    periodic with period ``2n``, so the filter is a circular convolution of the mirrored signal
    with the kernel folded modulo ``2n``. Up to ``_MATRIX_MAX_SIDE`` pixels the same map runs as
    banded matrices (:func:`separable`, whose index-based border handles kernels wider than the
    image too).
    """
    sh, sw = (sigma, sigma) if isinstance(sigma, int | float) else sigma
    kh, kw = gaussian_kernel1d(sh, truncate), gaussian_kernel1d(sw, truncate)
    if kh.size == 1 and kw.size == 1:
        return x.clone()
    if max(x.shape[-2:]) <= _MATRIX_MAX_SIDE and x.dim() == 4:
        return separable(x, kh, kw, "symmetric")
    for axis, k in ((-2, kh), (-1, kw)):
        r = k.size // 2
        n = x.shape[axis]
        folded = np.zeros(2 * n)
        np.add.at(folded, np.arange(-r, r + 1) % (2 * n), k)
        kf = torch.fft.rfft(torch.as_tensor(folded, dtype=x.dtype, device=x.device))
        ext = torch.cat([x, x.flip(axis)], dim=axis)  # (..., 2n) along axis
        shape = [1] * x.dim()
        shape[axis] = kf.numel()
        y = torch.fft.irfft(torch.fft.rfft(ext, dim=axis) * kf.view(shape), n=2 * n, dim=axis)
        x = y.narrow(axis, 0, n)
    return x


def filter2d(x: torch.Tensor, kernel: np.ndarray, mode: Border = "reflect") -> torch.Tensor:
    """``cv2.filter2D`` per channel: correlation with an odd square kernel, centred anchor.

    Kernels of at most 25 taps run as shifted multiply-adds (in a fixed order: integer kernels on
    integer images stay exact). Larger kernels on images up to ``_MATRIX_MAX_SIDE`` pixels run as
    a sum of separable banded matrices (:func:`lowrank_terms`), on larger images through the FFT
    (:func:`filter2d_fft`). All agree up to float rounding.
    """
    b, c, h, w = x.shape
    if kernel.size > 25:
        if max(h, w) <= _MATRIX_MAX_SIDE:
            return apply_axes_sum(x, *lowrank_terms(h, w, _kernel_key(kernel), mode, _rtol(x)))
        return filter2d_fft(x, kernel, mode)
    r0, r1 = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = pad(x.reshape(b * c, 1, h, w), r0, r1, mode)
    out = torch.zeros((b * c, 1, h, w), dtype=x.dtype, device=x.device)
    for (i, j), kij in np.ndenumerate(kernel):
        if kij != 0:
            out += float(kij) * padded[..., i : i + h, j : j + w]
    return out.reshape(b, c, h, w)


def filter2d_fft(x: torch.Tensor, kernel: np.ndarray, mode: Border = "reflect") -> torch.Tensor:
    """:func:`filter2d` through the FFT of the padded image (a circular convolution whose valid
    part is the correlation)."""
    b, c, h, w = x.shape
    r0, r1 = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = pad(x.reshape(b * c, 1, h, w), r0, r1, mode)
    ph, pw = padded.shape[-2:]
    flipped = torch.as_tensor(kernel[::-1, ::-1].copy(), dtype=x.dtype, device=x.device)
    spectrum = torch.fft.rfft2(flipped, s=(ph, pw)) * torch.fft.rfft2(padded)
    full = torch.fft.irfft2(spectrum, s=(ph, pw))
    return full[..., 2 * r0 : 2 * r0 + h, 2 * r1 : 2 * r1 + w].reshape(b, c, h, w)


def correlate(x: torch.Tensor, kernel: np.ndarray, mode: Border = "reflect") -> torch.Tensor:
    """:func:`filter2d` for real-valued data: on images up to ``_MATRIX_MAX_SIDE`` pixels always as
    separable terms (:func:`lowrank_terms`), whatever the kernel's size."""
    h, w = x.shape[-2:]
    if max(h, w) <= _MATRIX_MAX_SIDE:
        return apply_axes_sum(x, *lowrank_terms(h, w, _kernel_key(kernel), mode, _rtol(x)))
    return filter2d(x, kernel, mode)


_KernelKey = tuple[tuple[float, ...], ...]


def _rtol(x: torch.Tensor) -> float:
    # separable terms whose singular value is below 1 % of the dtype's epsilon (relative to the
    # largest) change no result beyond rounding: 1e-9 in float32, 2e-18 in float64
    return torch.finfo(x.dtype).eps * 1e-2


def _kernel_key(kernel: np.ndarray) -> _KernelKey:
    return tuple(tuple(row) for row in np.asarray(kernel, dtype=np.float64).tolist())


@lru_cache(maxsize=64)
def lowrank_terms(
    h: int, w: int, kernel: _KernelKey, mode: Border, rtol: float
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Row and column border matrices ``(mhs, mws)`` with ``Σₖ mhs[k] @ img @ mws[k]ᵀ`` equal to the
    2-D correlation of an ``h × w`` image with ``kernel`` (odd, square) and a border mode.

    The kernel's SVD ``Σ sₖ uₖ vₖᵀ`` splits it into separable terms (a blurred disk of radius ρ has
    rank about ρ, not its width); singular values below ``rtol`` times the largest are dropped.
    """
    k = np.asarray(kernel, dtype=np.float64)
    u, s, vt = np.linalg.svd(k)
    rank = max(1, int((s > s[0] * rtol).sum()))
    mhs = tuple(_border_matrix(h, tuple(u[:, i] * math.sqrt(s[i])), mode) for i in range(rank))
    mws = tuple(_border_matrix(w, tuple(vt[i] * math.sqrt(s[i])), mode) for i in range(rank))
    return mhs, mws


def _cv2_gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    t = np.arange(ksize) - (ksize - 1) / 2
    k = np.exp(-t * t / (2 * sigma * sigma))
    return k / k.sum()


@lru_cache(maxsize=64)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk, cropped to its non-zero support (float32 as there).

    A binary disk on a 17×17 grid (radius ≤ 8) or a ``2r+1`` grid, normalised, then blurred by a
    3×3 (5×5 for the larger grid) Gaussian of σ = ``alias_blur`` with a reflect-101 border.
    """
    if radius <= 8:
        grid, ksize = np.arange(-8, 9), 3
    else:
        grid, ksize = np.arange(-radius, radius + 1), 5
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = _cv2_gaussian_kernel(ksize, alias_blur)
    p = ksize // 2
    padded = np.pad(disk, p, mode="reflect")
    rows = sum(g[i] * padded[i : i + disk.shape[0], :] for i in range(ksize))
    k = sum(g[j] * rows[:, j : j + disk.shape[1]] for j in range(ksize))
    k = k.astype(np.float32)
    nz = np.argwhere(k != 0)
    m = int(np.abs(nz - np.array(k.shape) // 2).max()) if nz.size else 0
    c = k.shape[0] // 2
    return k[c - m : c + m + 1, c - m : c + m + 1]


def motion_taps(radius: float, sigma: float) -> np.ndarray:
    """Weights of the one-sided Gaussian line: ``2⌈r⌉+1`` taps, ``w_i ∝ exp(-i²/2σ²)``, sum 1."""
    width = 2 * math.ceil(radius) + 1
    i = np.arange(width, dtype=np.float64)
    w = np.exp(-(i * i) / (2 * sigma * sigma))
    return w / w.sum()


def motion_blur(
    x: torch.Tensor, radius: float, sigma: float, angle_deg: torch.Tensor
) -> torch.Tensor:
    """Blur each image along its own angle with the one-sided Gaussian line of :func:`motion_taps`.

    Tap ``i`` of image ``n`` samples the pixel ``round(i·(sin θₙ, cos θₙ))`` rows/columns away
    (round half down, as ImageMagick's ``MotionBlurImage`` offsets), with the edge replicated.

    The images are visited in order of angle, so that for each tap the images of a chunk share
    one or a few offsets: each run of equal offsets is one multiply-add of a shifted window of the
    edge-padded chunk (no per-pixel gather).

    Args:
        x: ``(N, C, H, W)``.
        radius: Line radius; ``2⌈radius⌉+1`` taps.
        sigma: Gaussian σ of the tap weights, in taps.
        angle_deg: ``(N,)`` angles in degrees (0 = to the right, 90 = down).

    Returns:
        The blurred batch, same shape.
    """
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    weights = motion_taps(radius, sigma)
    negligible = np.flatnonzero(weights < 1e-9)  # below float precision of the result
    if negligible.size:
        weights = weights[: max(1, int(negligible[0]))]
    theta = np.deg2rad(angle_deg.detach().to("cpu", torch.float64).numpy())
    order = np.argsort(theta, kind="stable")
    i = np.arange(weights.size, dtype=np.float64)
    dy = np.ceil(i[None, :] * np.sin(theta[order])[:, None] - 0.5).astype(np.int64)  # (N, taps)
    dx = np.ceil(i[None, :] * np.cos(theta[order])[:, None] - 0.5).astype(np.int64)
    top, left = max(0, -int(dy.min())), max(0, -int(dx.min()))
    bottom, right = max(0, int(dy.max())), max(0, int(dx.max()))
    perm = torch.as_tensor(order, device=x.device)
    xs = x.index_select(0, perm)
    out = torch.zeros_like(xs)
    span = next(chunks(xs))
    buf = x.new_empty((span.stop - span.start, c, top + h + bottom, left + w + right))
    key = dy * (left + right + 1) + dx  # equal offsets ⇔ equal keys
    for s in chunks(xs):
        p = buf[: s.stop - s.start]
        _fill_edge_padded(p, xs[s], top, left)
        o = out[s]
        for t, wt in enumerate(weights.tolist()):
            col = key[s, t]
            cuts = (np.flatnonzero(col[1:] != col[:-1]) + 1).tolist()
            for a, b in zip([0, *cuts], [*cuts, len(col)], strict=True):
                oy, ox = top + int(dy[s.start + a, t]), left + int(dx[s.start + a, t])
                o[a:b].add_(p[a:b, :, oy : oy + h, ox : ox + w], alpha=wt)
    return torch.empty_like(out).index_copy_(0, perm, out)


def _fill_edge_padded(p: torch.Tensor, x: torch.Tensor, top: int, left: int) -> None:
    """Write ``x`` into ``p`` at ``(top, left)`` and replicate its edges into the margins."""
    h, w = x.shape[-2:]
    bottom, right = p.shape[-2] - top - h, p.shape[-1] - left - w
    p[..., top : top + h, left : left + w] = x
    if left:
        p[..., top : top + h, :left] = x[..., :1]
    if right:
        p[..., top : top + h, left + w :] = x[..., -1:]
    if top:
        p[..., :top, :] = p[..., top : top + 1, :]
    if bottom:
        p[..., top + h :, :] = p[..., top + h - 1 : top + h, :]
