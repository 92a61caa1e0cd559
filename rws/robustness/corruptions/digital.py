"""Digital corruptions: brightness, contrast, elastic_transform, pixelate, jpeg_compression and the
extra saturate."""

from __future__ import annotations

import torch

from rws.robustness.corruptions import _filters, _jpeg, _rng
from rws.robustness.corruptions._color import hsv_to_rgb, rgb_to_hsv
from rws.robustness.corruptions._resample import (
    box_resize_round_trip,
    sample_affine,
    sample_bilinear,
)
from rws.robustness.corruptions.registry import register_corruption, register_variant


@register_corruption("brightness", family="digital", random=False)
def brightness(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Add ``c`` to the HSV value channel (clipped to 1), as skimage's HSV round trip.

    With hue and saturation fixed, RGB scales with the value ``v = max(R, G, B)``, so the round trip
    is ``x · v'/v`` (grey ``v'`` where ``v = 0``).
    """
    v = x.amax(1, keepdim=True)
    v_new = (v + c).clamp_(0.0, 1.0)
    black = v == 0  # then all of x is 0 (x ≥ 0): the product is 0 and v' is added
    scale = v_new / v.masked_fill(black, 1.0)
    return (x * scale).add_(v_new.masked_fill_(~black, 0.0))


@register_corruption("contrast", family="digital", random=False)
def contrast(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Scale each channel's deviation from its spatial mean by ``c``."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean).mul_(c).add_(mean)


@register_corruption("saturate", family="digital", extra=True, random=False)
def saturate(
    x: torch.Tensor, c: tuple[float, float], *, generator: torch.Generator
) -> torch.Tensor:
    """HSV saturation ``s·c[0] + c[1]`` clipped to [0, 1] (validation corruption)."""
    hsv = rgb_to_hsv(x)
    s = (hsv[:, 1] * c[0] + c[1]).clamp(0.0, 1.0)
    return hsv_to_rgb(torch.stack([hsv[:, 0], s, hsv[:, 2]], dim=1))


def elastic_warp(
    x: torch.Tensor, inverse_affine: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor
) -> torch.Tensor:
    """The two resamplings of ``elastic_transform`` for given random draws.

    First ``cv2.warpAffine`` (bilinear, reflect-101 border): output pixel ``(col, row)`` samples the
    source at ``inverse_affine @ (col, row, 1)``. Then ``scipy.ndimage.map_coordinates(order=1,
    mode="reflect")`` at ``(row + dy, col + dx)``.

    Args:
        x: ``(N, C, H, W)``.
        inverse_affine: ``(N, 2, 3)`` map from output ``(col, row, 1)`` to source ``(col, row)``.
        dx: ``(N, H, W)`` column displacements.
        dy: ``(N, H, W)`` row displacements.

    Returns:
        The warped batch.
    """
    _, _, h, w = x.shape
    x = sample_affine(x, inverse_affine.to(x.device), border="reflect")
    rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1)
    cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w)
    return sample_bilinear(x, dy + rows, dx + cols, border="symmetric")


@register_corruption("elastic_transform", family="digital")
def elastic_transform(
    x: torch.Tensor, c: tuple[float, float, float], *, generator: torch.Generator
) -> torch.Tensor:
    """Random affine jitter then a smooth random displacement field, ``c = (α, σ, affine range)``.

    Three points ``centre ± side//3`` move by ``U(-range, range)`` each (the affine they define warps
    the image); then every pixel moves by ``α·gaussian_σ(U(-1, 1))`` per axis (truncate 3, scipy
    ``reflect`` border). Pixel values are used as published (CIFAR: for 32 px, ImageNet: 244·…).
    """
    alpha, sigma, spread = float(c[0]), float(c[1]), float(c[2])
    n, _, h, w = x.shape
    cx, cy, s = w // 2, h // 2, min(h, w) // 3
    src = torch.tensor(
        [[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], dtype=torch.float64, device=x.device
    )
    jitter = _rng.uniform((n, 3, 2), generator, x, -spread, spread).to(torch.float64)
    dst = src + jitter  # (N, 3, 2) where the three points go
    lhs = torch.cat([dst, torch.ones(n, 3, 1, dtype=torch.float64, device=x.device)], dim=2)
    inverse = torch.linalg.solve(lhs, src.expand(n, 3, 2)).transpose(1, 2)  # (N, 2, 3)
    fields = _rng.uniform((n, 2, h, w), generator, x, -1.0, 1.0)
    fields = _filters.gaussian_symmetric_fft(fields, sigma, truncate=3.0).mul_(alpha)
    return elastic_warp(x, inverse, fields[:, 0], fields[:, 1])


@register_variant("elastic_transform", table="imagecorruptions")
def elastic_transform_imagecorruptions(
    x: torch.Tensor, c: tuple[float, float, float], *, generator: torch.Generator
) -> torch.Tensor:
    """The ``imagecorruptions`` package's elastic transform: no affine step, sizes relative to
    the image, ``c = (α, σ / side, amplitude / height)``.

    Every pixel moves by ``α·gaussian_σ(U(-a, a))`` per axis, ``σ = (σ/side)·(H, W)`` (per axis),
    ``a = (amplitude/height)·H`` for both axes (truncate 3, scipy ``reflect`` border), then
    ``map_coordinates(order=1, mode="reflect")``.
    """
    alpha, rel_sigma, rel_amp = float(c[0]), float(c[1]), float(c[2])
    n, _, h, w = x.shape
    fields = _rng.uniform((n, 2, h, w), generator, x, -rel_amp * h, rel_amp * h)  # dx, dy
    fields = _filters.gaussian_symmetric_fft(fields, (rel_sigma * h, rel_sigma * w), truncate=3.0)
    fields = fields.mul_(alpha)
    rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1)
    cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w)
    return sample_bilinear(x, fields[:, 1] + rows, fields[:, 0] + cols, border="symmetric")


@register_corruption("pixelate", family="digital", random=False)
def pixelate(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Pillow BOX resize to ``int(side·c)`` and BOX back (the reference's resampling, in float)."""
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * c)), max(1, int(w * c))
    return box_resize_round_trip(x, sh, sw)


@register_variant("pixelate", table="imagecorruptions")
def pixelate_nearest(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """The ``imagecorruptions`` package's pixelate: Pillow BOX resize to ``int(side·c)``, then
    NEAREST back. Pillow's BOX upsampling also copies one pixel; the two differ only where an
    output pixel centre falls exactly on a source pixel edge (never at 224×224 for these factors;
    :func:`_resample.pil_nearest_matrix`)."""
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * c)), max(1, int(w * c))
    return box_resize_round_trip(x, sh, sw, up="nearest")


@register_corruption("jpeg_compression", family="digital", random=False)
def jpeg_compression(x: torch.Tensor, c: int, *, generator: torch.Generator) -> torch.Tensor:
    """Pillow JPEG encode/decode at quality ``c`` (default 4:2:0 chroma subsampling).

    The one kernel that is not a torch op: the images are rounded to uint8 and round-tripped
    through Pillow on the CPU (encoded together as one canvas, byte-identical to encoding each
    alone, :mod:`._jpeg`), then moved back to the batch's device.
    """
    u8 = x.detach().mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
    arr = u8.permute(0, 2, 3, 1).cpu().numpy()
    out = _jpeg.round_trip(arr, int(c))
    y = torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)
    return y / 255.0
