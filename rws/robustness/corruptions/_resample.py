"""Resampling as matrices and sampling grids: clipped zoom, PIL box resize, bilinear warps."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from rws.robustness.corruptions._linear import apply_axes, apply_plane, kron_sum_csr, sparse_ok


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
def zoom_crop_matrix(n: int, factor: float) -> np.ndarray:
    """``(round(crop·z), n)`` matrix: the central ``crop = ceil(n / z)`` pixels zoomed by ``z`` with
    ``scipy.ndimage.zoom(order=1)`` (output length ``round(crop·z)``, corner-aligned grid)."""
    crop = int(np.ceil(n / factor))
    top = (n - crop) // 2
    out = round(crop * factor)
    j = np.arange(out, dtype=np.float64)
    scale = (crop - 1) / (out - 1) if out > 1 else 0.0
    return _linear_rows(top + j * scale, n)


@lru_cache(maxsize=256)
def clipped_zoom_matrix(n: int, factor: float) -> np.ndarray:
    """``(n, n)`` matrix of the reference's ``clipped_zoom`` along one axis: the central ``n`` rows
    of :func:`zoom_crop_matrix`.

    The ``imagecorruptions`` package keeps the first ``n`` instead; for factors up to 1.5 (all of
    zoom_blur's) the zoom is at most ``n + 1`` long, both trims start at 0 and agree.
    """
    full = zoom_crop_matrix(n, factor)
    trim = (full.shape[0] - n) // 2
    return full[trim : trim + n].copy()


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


@lru_cache(maxsize=256)
def pil_nearest_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` 0/1 matrix of Pillow's ``resize(..., Image.NEAREST)`` along one
    axis: output ``o`` takes input ``int(s/2 + o·s)``, ``s = in/out``, summed term by term in
    float64 as Pillow does. For upsampling this is Pillow's BOX (:func:`pil_box_matrix`) except at
    exact ties ``(o + ½)·s = k``, which can land on ``k - 1`` where BOX takes ``k``."""
    s = in_size / out_size
    steps = np.full(out_size, s)
    steps[0] = s * 0.5
    src = np.add.accumulate(steps).astype(int)  # sequential, as Pillow's ``xo += a[0]``
    m = np.zeros((out_size, in_size))
    m[np.arange(out_size), np.minimum(src, in_size - 1)] = 1.0
    return m


@lru_cache(maxsize=32)
def _zoom_csr(
    h: int, w: int, factors: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Mean of the clipped zooms by ``factors`` (1.0: the identity) as a CSR plane operator."""
    terms = [
        (1.0 / len(factors), clipped_zoom_matrix(h, z), clipped_zoom_matrix(w, z)) for z in factors
    ]
    return kron_sum_csr(terms, device, dtype)


def zoom_mean(x: torch.Tensor, factors: tuple[float, ...]) -> torch.Tensor:
    """Mean of the images and their clipped centre zooms by each factor (:func:`clipped_zoom_matrix`).

    The mean of the ``len(factors) + 1`` separable maps is one sparse operator on the flattened
    plane (a few non-zeros per pixel), cached per shape, factors, device and dtype.
    """
    h, w = x.shape[-2:]
    if sparse_ok(x):
        return apply_plane(x, _zoom_csr(h, w, (1.0, *factors), x.device, x.dtype))
    total = x.clone()
    for z in factors:
        total += apply_axes(x, clipped_zoom_matrix(h, z), clipped_zoom_matrix(w, z))
    return total / (len(factors) + 1)


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The reference's ``clipped_zoom`` of each plane (:func:`clipped_zoom_matrix` on both axes)."""
    h, w = x.shape[-2:]
    if sparse_ok(x):
        return apply_plane(x, _zoom_csr(h, w, (float(factor),), x.device, x.dtype))
    return apply_axes(x, clipped_zoom_matrix(h, factor), clipped_zoom_matrix(w, factor))


def zoom_crop(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Each plane's central crop zoomed by ``factor`` (:func:`zoom_crop_matrix`), untrimmed:
    ``(N, C, round(crop_h·z), round(crop_w·z))``, at least the input's size."""
    h, w = x.shape[-2:]
    mh = torch.as_tensor(zoom_crop_matrix(h, factor), dtype=x.dtype, device=x.device)
    mw = torch.as_tensor(zoom_crop_matrix(w, factor), dtype=x.dtype, device=x.device)
    return torch.matmul(torch.matmul(mh, x), mw.t())


@lru_cache(maxsize=32)
def _box_round_trip_csr(
    h: int, w: int, sh: int, sw: int, device: torch.device, dtype: torch.dtype, up: str = "box"
) -> torch.Tensor:
    return kron_sum_csr([(1.0, *box_round_trip(h, w, sh, sw, up))], device, dtype)


def box_round_trip(
    h: int, w: int, sh: int, sw: int, up: str = "box"
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column matrices of Pillow resizes ``(h, w) → (sh, sw)`` (BOX) ``→ (h, w)`` (BOX,
    or NEAREST for ``up="nearest"``)."""
    back = pil_nearest_matrix if up == "nearest" else pil_box_matrix
    return (back(sh, h) @ pil_box_matrix(h, sh), back(sw, w) @ pil_box_matrix(w, sw))


def box_resize_round_trip(x: torch.Tensor, sh: int, sw: int, up: str = "box") -> torch.Tensor:
    """Pillow BOX resize of each plane to ``(sh, sw)`` and back (BOX, or NEAREST for
    ``up="nearest"``), as one cached sparse operator."""
    h, w = x.shape[-2:]
    if sparse_ok(x):
        return apply_plane(x, _box_round_trip_csr(h, w, sh, sw, x.device, x.dtype, up))
    return apply_axes(x, *box_round_trip(h, w, sh, sw, up))


def _normalise(n: int, border: str) -> tuple[float, float]:
    """``(scale, shift)`` taking pixel coordinates to ``grid_sample``'s for a border mode."""
    if border == "reflect":  # align_corners=True: ±1 are the border pixel centres
        return 2.0 / max(n - 1, 1), -1.0
    return 2.0 / n, 1.0 / n - 1.0  # align_corners=False: ±1 are the image edges


def _grid_sample(x: torch.Tensor, grid: torch.Tensor, border: str) -> torch.Tensor:
    return F.grid_sample(
        x, grid, mode="bilinear", padding_mode="reflection", align_corners=border == "reflect"
    )


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
    (sx, tx), (sy, ty) = _normalise(w, border), _normalise(h, border)
    rows, cols = torch.broadcast_tensors(rows, cols)
    grid = torch.stack([cols, rows], dim=-1).to(x.dtype)
    scale = torch.tensor([sx, sy], dtype=x.dtype, device=x.device)
    shift = torch.tensor([tx, ty], dtype=x.dtype, device=x.device)
    return _grid_sample(x, grid.mul_(scale).add_(shift), border)


def sample_affine(x: torch.Tensor, affine: torch.Tensor, *, border: str) -> torch.Tensor:
    """Bilinear samples of each image at ``affine[n] @ (col, row, 1)`` for every output pixel.

    Args:
        x: ``(N, C, H, W)``.
        affine: ``(N, 2, 3)`` map from output pixel ``(col, row, 1)`` to source ``(col, row)``.
        border: As in :func:`sample_bilinear`.

    Returns:
        The warped batch; the grid comes from ``affine_grid`` with the map expressed in
        ``grid_sample``'s normalised coordinates.
    """
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    (sx, tx), (sy, ty) = _normalise(w, border), _normalise(h, border)
    norm = torch.tensor([[sx, 0.0, tx], [0.0, sy, ty], [0.0, 0.0, 1.0]], dtype=torch.float64)
    norm = norm.to(affine.device)
    full = torch.cat([affine.to(torch.float64), norm[2:].expand(n, 1, 3)], dim=1)  # (N, 3, 3)
    theta = (norm @ full @ torch.linalg.inv(norm))[:, :2].to(x.dtype)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=border == "reflect")
    return _grid_sample(x, grid, border)


def next_pow2(n: int) -> int:
    """The smallest power of two ≥ ``n``."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))
