"""Blur corruptions: defocus, glass, motion and zoom blur, and the extra gaussian_blur."""

from __future__ import annotations

import torch

from rws.robustness.corruptions import _filters, _rng
from rws.robustness.corruptions._resample import zoom_mean
from rws.robustness.corruptions.registry import register_corruption, register_variant


@register_corruption("defocus_blur", family="blur", random=False)
def defocus_blur(
    x: torch.Tensor, c: tuple[float, float], *, generator: torch.Generator
) -> torch.Tensor:
    """Correlation with an anti-aliased disk ``c = (radius, alias σ)``, reflect-101 border (cv2).

    The disk is a sum of a few separable terms (its SVD, :func:`_filters.lowrank_terms`), so the
    correlation runs as banded matrix products rather than a 2-D FFT.
    """
    return _filters.correlate(x, _filters.disk_kernel(float(c[0]), float(c[1])), "reflect")


def glass_shuffle(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, delta: int) -> torch.Tensor:
    """One pass of the reference's sequential local "swap", computed exactly for the whole batch.

    Args:
        x: ``(N, C, H, W)``.
        dy: ``(N, H, W)`` row offsets in ``[-δ, δ)``; only entries at visited positions are read.
        dx: ``(N, H, W)`` column offsets, likewise.
        delta: δ.

    Returns:
        The batch after the pass (:func:`glass_sources`).
    """
    return _take_pixels(x, glass_sources(dy, dx, delta))


def glass_sources(dy: torch.Tensor, dx: torch.Tensor, delta: int) -> torch.Tensor:
    """``(N·H·W,)`` int32: for each pixel (flat over the batch), the flat index of the pixel whose
    pre-pass value it holds after one pass.

    The reference visits rows ``H-δ … δ+1`` and, inside each, columns ``W-δ … δ+1`` (bottom-right
    to top-left) and runs ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``, ``(h', w') = (h+dy, w+dx)``.
    With numpy views that is a copy, ``x[h, w] ← x[h', w']`` as it stands at that moment: the value
    of a source already visited in this pass, else its value before the pass. Following "already
    visited" links to their end (by pointer doubling) gives each pixel its final source.
    """
    n, h, w = dy.shape
    dev = dy.device
    rows = torch.arange(h, device=dev, dtype=torch.int32).view(1, h, 1)
    cols = torch.arange(w, device=dev, dtype=torch.int32).view(1, 1, w)
    visited = (rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta)
    step = (dy.to(torch.int32) * w).add_(dx.to(torch.int32)).masked_fill_(~visited, 0)
    local = (step + rows * w + cols).view(-1)  # source raster index within the image
    # the scan runs in decreasing raster order: a visited source with a larger index went first
    follow = visited.view(-1).index_select(0, local).view(n, h * w)
    follow = follow.logical_and_(step.view(n, h * w) > 0).view(-1)
    base = torch.arange(0, n * h * w, h * w, device=dev, dtype=torch.int32).view(n, 1)
    src = local.view(n, h * w).add_(base).view(-1)  # flat over the batch
    ptr = torch.where(follow, src, torch.arange(src.numel(), device=dev, dtype=torch.int32))
    while True:  # pointer doubling to each chain's end: log2(longest chain) rounds
        nxt = ptr.index_select(0, ptr)
        if torch.equal(nxt, ptr):
            return src.index_select(0, ptr)  # the end's own source, read before the pass
        ptr = nxt


def _take_pixels(x: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """``x`` with each pixel replaced by pixel ``sources`` (flat over the batch, all channels)."""
    n, c, h, w = x.shape
    base = torch.arange(0, n * h * w, h * w, device=x.device).view(n, 1, 1)
    local = sources.view(n, 1, h * w).long().sub_(base).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, local).view(n, c, h, w)


@register_corruption("glass_blur", family="blur")
def glass_blur(
    x: torch.Tensor, c: tuple[float, int, int], *, generator: torch.Generator
) -> torch.Tensor:
    """Gaussian blur σ, truncation to uint8, ``iterations`` passes of local pixel copies within
    ``max δ`` (:func:`glass_sources`), Gaussian blur σ again; ``c = (σ, max δ, iterations)``.

    The passes only move pixels, so their source maps are composed and the pixels moved once.
    """
    sigma, delta, iterations = float(c[0]), int(c[1]), int(c[2])
    n, _, h, w = x.shape
    x = _filters.gaussian(x, sigma)
    x = x.clamp_(0.0, 1.0).mul_(255.0).floor_().div_(255.0)  # the reference's np.uint8(... * 255)
    sources = None
    for _ in range(iterations):
        dx = _rng.randint((n, h, w), generator, x.device, -delta, delta, dtype=torch.int32)
        dy = _rng.randint((n, h, w), generator, x.device, -delta, delta, dtype=torch.int32)
        step = glass_sources(dy, dx, delta)
        sources = step if sources is None else sources.index_select(0, step)
    if sources is not None:
        x = _take_pixels(x, sources)
    return _filters.gaussian(x, sigma)


@register_corruption(
    "motion_blur", family="blur",
    approximate="rws's own line kernel, not ImageMagick's MotionBlurImage, no uint8 round trip",
)  # fmt: skip
def motion_blur(
    x: torch.Tensor, c: tuple[float, float], *, generator: torch.Generator
) -> torch.Tensor:
    """One-sided Gaussian line blur ``c = (radius, σ)`` at a random angle in [-45°, 45°) per image.

    The reference called ImageMagick's ``MotionBlurImage``; this is rws's own line kernel of the
    same shape (:func:`rws.robustness.corruptions._filters.motion_blur`), without the uint8 round trip.
    """
    angle = _rng.uniform((x.shape[0],), generator, x, -45.0, 45.0)
    return _filters.motion_blur(x, float(c[0]), float(c[1]), angle)


# the imagecorruptions package blurs with this same shift-and-add line kernel (no ImageMagick)
register_variant("motion_blur", table="imagecorruptions")(motion_blur)


@register_corruption("zoom_blur", family="blur", random=False)
def zoom_blur(x: torch.Tensor, c: tuple[float, ...], *, generator: torch.Generator) -> torch.Tensor:
    """Mean of the image and its centre zooms by each factor in ``c``, clipped to the image size.

    All zooms and the mean are one sparse linear map (:func:`_resample.zoom_mean`). The
    ``imagecorruptions`` package trims each zoom from its top-left corner instead, which for these
    factors (≤ 1.5) is the same crop (:func:`_resample.clipped_zoom_matrix`): no variant needed.
    """
    return zoom_mean(x, tuple(float(z) for z in c))


@register_corruption("gaussian_blur", family="blur", extra=True, random=False)
def gaussian_blur(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """``skimage.filters.gaussian`` of σ = ``c`` (truncate 4, nearest border); validation set."""
    return _filters.gaussian(x, float(c))
