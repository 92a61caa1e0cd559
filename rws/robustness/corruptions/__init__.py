"""CIFAR-10-C / ImageNet-C corruptions as batched torch kernels.

``corrupt(images, name, severity)`` applies one of the 15 benchmark corruptions (``CORRUPTIONS``) or
the 4 validation ones (``EXTRA_CORRUPTIONS``) to a batch ``(N, 3, H, W)`` of float images in [0, 1]
on any device, with the published severity tables (:mod:`.params`: hendrycks's CIFAR-10-C and
ImageNet-C scripts, or the ``imagecorruptions`` package) and an optional ``torch.Generator``.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch

from rws.data.severity import check_severity
from rws.errors import UsageError
from rws.robustness.corruptions import blur, digital, noise, spatter, weather  # noqa: F401
from rws.robustness.corruptions._rng import make_generator
from rws.robustness.corruptions.params import Table, resolve_table, severity_params, table_label
from rws.robustness.corruptions.registry import (
    CORRUPTION_REGISTRY,
    benchmark_order,
    corruption_info,
    fidelity_note,
    get_corruption,
    kernel_fidelity,
    list_corruptions,
    register_corruption,
    table_kernel,
)

logger = logging.getLogger(__name__)

# derived from the registry (each entry's ``extra`` flag), in the published benchmark order
CORRUPTIONS: tuple[str, ...] = benchmark_order(extra=False)
EXTRA_CORRUPTIONS: tuple[str, ...] = benchmark_order(extra=True)

MIN_SIDE = 8
_RANGE_SLACK = 0.05  # values within [-0.05, 1.05] are clamped; further out is a usage error


def _check_images(images: object) -> tuple[torch.Tensor, float, float]:
    """``images`` validated, with its minimum and maximum (both 0 for an empty batch)."""
    if not isinstance(images, torch.Tensor):
        raise UsageError(f"images must be a torch.Tensor, not {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise UsageError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise UsageError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
    h, w = images.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise UsageError(f"images must be at least {MIN_SIDE}×{MIN_SIDE} pixels, got {h}×{w}")
    if not images.numel():
        return images, 0.0, 0.0
    # one pass: a NaN propagates to both, ±Inf shows as an extreme
    lo_t, hi_t = torch.aminmax(images.detach())
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UsageError("images contain NaN or Inf values")
    if lo < -_RANGE_SLACK or hi > 1.0 + _RANGE_SLACK:
        raise UsageError(
            f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]"
            + ("; divide 0–255 images by 255" if hi > 2.0 else "")
        )
    return images, lo, hi


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    params: Literal["cifar", "imagenet", "imagecorruptions", "auto"] = "auto",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply a corruption to a batch of images.

    Args:
        images: ``(N, 3, H, W)`` float tensor in [0, 1], on any device.
        name: A name from ``list_corruptions()``, e.g. ``"fog"``.
        severity: 1 (mildest) to 5.
        params: Severity table: ``"cifar"`` (CIFAR-10-C's ``make_cifar_c.py``, for 32×32),
            ``"imagenet"`` (ImageNet-C's ``make_imagenet_c.py``, for 224×224),
            ``"imagecorruptions"`` (the ``imagecorruptions`` package, as COCO-C and most
            detection/segmentation sets were made: the ImageNet table with its elastic_transform,
            pixelate and snow) or ``"auto"`` (CIFAR when H and W ≤ 64, else ImageNet).
        generator: Source of all random draws (its own device); ``None`` draws a fresh seed.
            The global RNGs are never used.

    Returns:
        The corrupted batch: same shape, dtype and device, clamped to [0, 1].

    Raises:
        UnknownNameError: ``name`` is not registered.
        UsageError: Bad severity, params, shape, dtype or value range.

    Example:
        >>> x = torch.rand(4, 3, 32, 32)
        >>> y = corrupt(x, "fog", 3, generator=torch.Generator().manual_seed(0))
        >>> y.shape
        torch.Size([4, 3, 32, 32])
    """
    get_corruption(name)
    check_severity(severity)
    x, lo, hi = _check_images(images)
    table = resolve_table(params, x.shape[-2], x.shape[-1])
    kernel = table_kernel(name, table)
    if x.shape[0] == 0:
        return x.clone()
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    work = work.detach()
    if lo < 0.0 or hi > 1.0:
        work = work.clamp(0.0, 1.0)
    g = make_generator(generator, x.device)
    logger.debug("corrupt %s severity %d (%s table) on %s", name, severity, table, tuple(x.shape))
    out = kernel(work, severity_params(name, severity, table), generator=g)
    if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        out = out.clone()  # kernels never write to their input; the clamp below must not either
    return out.clamp_(0.0, 1.0).to(x.dtype).contiguous()


__all__ = [
    "CORRUPTIONS",
    "CORRUPTION_REGISTRY",
    "EXTRA_CORRUPTIONS",
    "Table",
    "corrupt",
    "corruption_info",
    "fidelity_note",
    "get_corruption",
    "kernel_fidelity",
    "list_corruptions",
    "register_corruption",
    "resolve_table",
    "table_kernel",
    "table_label",
]
