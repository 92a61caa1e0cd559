"""Resampling as matrices and sampling grids: clipped zoom, PIL box resize, bilinear warps."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


def _linear_rows(coords: np.ndarray, n: int) -> np.ndarray:
    """``(len(coords), n)`` linear-interpolation weights at in-range coordinates."""
    m = np.zeros((coords.size, n))
    lo = np.clip(np.floor(coords).astype(int), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = coords - lo
    rows = np.arange(coords.size)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


@lru_cache(maxsize=256)
def clipped_zoom_matrix(n: int, factor: float) -> np.ndarray:
    """``(n, n)`` matrix of the reference's ``clipped_zoom`` along one axis.

    Crop the central ``ceil(n / z)`` pixels, zoom them by ``z`` with ``scipy.ndimage.zoom(order=1)``
    (output length ``round(crop·z)``, corner-aligned grid), then keep the central ``n`` pixels.
    """
    crop = int(np.ceil(n / factor))
    top = (n - crop) // 2
    out = round(crop * factor)
    trim = (out - n) // 2
    j = np.arange(trim, trim + n, dtype=np.float64)
    scale = (crop - 1) / (out - 1) if out > 1 else 0.0
    return _linear_rows(top + j * scale, n)


@lru_cache(maxsize=256)
def pil_box_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` weights of Pillow's ``resize(..., Image.BOX)`` along one axis."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = np.zeros((out_size, in_size))
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        t = (np.arange(lo, hi) - center + 0.5) / filterscale
        w = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
        if w.sum() > 0:
            m[o, lo:hi] = w / w.sum()
    return m


def apply_axes(x: torch.Tensor, mh: np.ndarray, mw: np.ndarray) -> torch.Tensor:
    """``mh @ x @ mwᵀ`` on the last two axes (a separable linear resampling)."""
    th = torch.as_tensor(mh, dtype=x.dtype, device=x.device)
    tw = torch.as_tensor(mw, dtype=x.dtype, device=x.device)
    return torch.matmul(torch.matmul(th, x), tw.transpose(0, 1))


def sample_bilinear(
    x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, *, border: str
) -> torch.Tensor:
    """Bilinear samples of ``x`` ``(N, C, H, W)`` at pixel coordinates ``(N, H', W')``.

    Args:
        x: The batch.
        rows: Row coordinates (0 = first pixel centre).
        cols: Column coordinates.
        border: ``"reflect"`` (reflect-101 about the border pixel centres, cv2
            ``BORDER_REFLECT_101``) or ``"symmetric"`` (about the image edges, scipy ``reflect``).

    Returns:
        ``(N, C, H', W')``.
    """
    h, w = x.shape[-2:]
    if border == "reflect":  # align_corners=True: ±1 are the border pixel centres
        gx = cols * (2.0 / max(w - 1, 1)) - 1.0
        gy = rows * (2.0 / max(h - 1, 1)) - 1.0
        corners = True
    else:  # align_corners=False: ±1 are the image edges
        gx = (2.0 * cols + 1.0) / w - 1.0
        gy = (2.0 * rows + 1.0) / h - 1.0
        corners = False
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=corners)


def next_pow2(n: int) -> int:
    """The smallest power of two ≥ ``n``."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))
