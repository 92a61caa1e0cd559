"""Blur corruptions: defocus, glass, motion and zoom blur, and the extra gaussian_blur."""

from __future__ import annotations

import math

import torch

from rws.robustness.corruptions import _filters, _rng
from rws.robustness.corruptions._resample import apply_axes, clipped_zoom_matrix
from rws.robustness.corruptions.registry import register_corruption


@register_corruption("defocus_blur", family="blur", random=False)
def defocus_blur(
    x: torch.Tensor, c: tuple[float, float], *, generator: torch.Generator
) -> torch.Tensor:
    """Correlation with an anti-aliased disk ``c = (radius, alias σ)``, reflect-101 border (cv2)."""
    return _filters.filter2d(x, _filters.disk_kernel(float(c[0]), float(c[1])), "reflect")


def glass_shuffle(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, delta: int) -> torch.Tensor:
    """One pass of the reference's sequential local "swap", computed exactly for the whole batch.

    The reference visits rows ``H-δ … δ+1`` and, inside each, columns ``W-δ … δ+1`` (bottom-right
    to top-left) and runs ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``, ``(h', w') = (h+dy, w+dx)``.
    With numpy views that is a copy, ``x[h, w] ← x[h', w']`` as it stands at that moment: the value
    of a source already visited in this pass, else its value before the pass. Following "already
    visited" links to their end gives each pixel its final source, found by pointer doubling.

    Args:
        x: ``(N, C, H, W)``.
        dy: ``(N, H, W)`` row offsets in ``[-δ, δ)``; only entries at visited positions are read.
        dx: ``(N, H, W)`` column offsets, likewise.
        delta: δ.

    Returns:
        The batch after the pass.
    """
    n, c, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    visited = ((rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta)).expand(
        n, h, w
    )
    me = (rows * w + cols).expand(n, h, w).reshape(n, -1)  # (N, H*W) raster index
    src = ((rows + dy) * w + (cols + dx)).reshape(n, -1)
    visited = visited.reshape(n, -1)
    src = torch.where(visited, src.clamp(0, h * w - 1), me)
    # the scan runs in decreasing raster order: a visited source with a larger index went first
    follow = visited & visited.gather(1, src) & (src > me)
    ptr = torch.where(follow, src, me)
    end = src  # the pixel whose pre-pass value a chain ends on
    for _ in range(max(1, math.ceil(math.log2(h * w))) + 1):
        nxt = ptr.gather(1, ptr)
        if torch.equal(nxt, ptr):
            break
        ptr = nxt
    final = end.gather(1, ptr)  # (N, H*W)
    flat = x.reshape(n, c, h * w)
    return flat.gather(2, final[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)


@register_corruption("glass_blur", family="blur")
def glass_blur(
    x: torch.Tensor, c: tuple[float, int, int], *, generator: torch.Generator
) -> torch.Tensor:
    """Gaussian blur σ, truncation to uint8, ``iterations`` passes of local pixel copies within
    ``max δ`` (:func:`glass_shuffle`), Gaussian blur σ again; ``c = (σ, max δ, iterations)``."""
    sigma, delta, iterations = float(c[0]), int(c[1]), int(c[2])
    n, _, h, w = x.shape
    x = _filters.gaussian(x, sigma)
    x = torch.floor(x.clamp(0.0, 1.0) * 255.0) / 255.0  # the reference's np.uint8(... * 255)
    for _ in range(iterations):
        dx = _rng.randint((n, h, w), generator, x.device, -delta, delta)
        dy = _rng.randint((n, h, w), generator, x.device, -delta, delta)
        x = glass_shuffle(x, dy, dx, delta)
    return _filters.gaussian(x, sigma)


@register_corruption("motion_blur", family="blur")
def motion_blur(
    x: torch.Tensor, c: tuple[float, float], *, generator: torch.Generator
) -> torch.Tensor:
    """One-sided Gaussian line blur ``c = (radius, σ)`` at a random angle in [-45°, 45°) per image.

    The reference called ImageMagick's ``MotionBlurImage``; this is rws's own line kernel of the
    same shape (:func:`rws.robustness.corruptions._filters.motion_blur`), without the uint8 round trip.
    """
    angle = _rng.uniform((x.shape[0],), generator, x, -45.0, 45.0)
    return _filters.motion_blur(x, float(c[0]), float(c[1]), angle)


@register_corruption("zoom_blur", family="blur", random=False)
def zoom_blur(x: torch.Tensor, c: tuple[float, ...], *, generator: torch.Generator) -> torch.Tensor:
    """Mean of the image and its centre zooms by each factor in ``c``, clipped to the image size."""
    h, w = x.shape[-2:]
    total = x.clone()
    for z in c:
        total += apply_axes(x, clipped_zoom_matrix(h, z), clipped_zoom_matrix(w, z))
    return total / (len(c) + 1)


@register_corruption("gaussian_blur", family="blur", extra=True, random=False)
def gaussian_blur(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """``skimage.filters.gaussian`` of σ = ``c`` (truncate 4, nearest border); validation set."""
    return _filters.gaussian(x, float(c))
