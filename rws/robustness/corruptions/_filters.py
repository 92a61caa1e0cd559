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


def border_matrix(n: int, kernel: np.ndarray, mode: Border) -> np.ndarray:
    """``(n, n)`` matrix of a 1-D correlation with ``kernel`` (odd length) and a border mode."""
    r = kernel.size // 2
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
        mh = torch.as_tensor(border_matrix(h, kh, mode), dtype=x.dtype, device=x.device)
        mw = torch.as_tensor(border_matrix(w, kw, mode), dtype=x.dtype, device=x.device)
        return torch.matmul(torch.matmul(mh, x), mw.transpose(0, 1))
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


def gaussian_symmetric_fft(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Gaussian filter, scipy's ``reflect`` border, exact for any σ (even wider than the image).

    The symmetric extension of a length-``n`` axis is periodic with period ``2n``, so the filter
    is a circular convolution of the mirrored signal with the kernel folded modulo ``2n``.
    """
    k = gaussian_kernel1d(sigma, truncate)
    if k.size == 1:
        return x
    r = k.size // 2
    for axis in (-2, -1):
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

    Kernels of more than 25 taps go through the FFT of the padded image (much faster than a one-channel
    ``conv2d`` on the CPU); the result is the same up to float rounding.
    """
    b, c, h, w = x.shape
    r0, r1 = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = pad(x.reshape(b * c, 1, h, w), r0, r1, mode)
    if kernel.size <= 25:  # a few shifted multiply-adds
        out = torch.zeros((b * c, 1, h, w), dtype=x.dtype, device=x.device)
        for (i, j), kij in np.ndenumerate(kernel):
            if kij != 0:
                out += float(kij) * padded[..., i : i + h, j : j + w]
        return out.reshape(b, c, h, w)
    ph, pw = padded.shape[-2:]
    flipped = torch.as_tensor(kernel[::-1, ::-1].copy(), dtype=x.dtype, device=x.device)
    spectrum = torch.fft.rfft2(flipped, s=(ph, pw)) * torch.fft.rfft2(padded)
    full = torch.fft.irfft2(spectrum, s=(ph, pw))  # circular convolution; valid part is exact
    return full[..., 2 * r0 : 2 * r0 + h, 2 * r1 : 2 * r1 + w].reshape(b, c, h, w)


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

    Args:
        x: ``(N, C, H, W)``.
        radius: Line radius; ``2⌈radius⌉+1`` taps.
        sigma: Gaussian σ of the tap weights, in taps.
        angle_deg: ``(N,)`` angles in degrees (0 = to the right, 90 = down).

    Returns:
        The blurred batch, same shape.
    """
    n, c, h, w = x.shape
    weights = motion_taps(radius, sigma)
    theta = torch.deg2rad(angle_deg.to(x.device, torch.float64))
    sin, cos = torch.sin(theta), torch.cos(theta)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    flat = x.reshape(n, c, h * w)
    out = torch.zeros_like(flat)
    for i, wi in enumerate(weights):
        if wi < 1e-9:  # below float precision of the result; the line is negligible from here on
            break
        dy = torch.ceil(i * sin - 0.5).long()  # (N,)
        dx = torch.ceil(i * cos - 0.5).long()
        r = (rows[None, :] + dy[:, None]).clamp(0, h - 1)  # (N, H)
        q = (cols[None, :] + dx[:, None]).clamp(0, w - 1)  # (N, W)
        idx = (r[:, :, None] * w + q[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
        out += float(wi) * flat.gather(2, idx)
    return out.reshape(n, c, h, w)
