"""Weather corruptions: snow, frost, fog (the validation corruption spatter is in its module)."""

from __future__ import annotations

import torch

from rws.robustness.corruptions import _filters, _rng
from rws.robustness.corruptions._color import rgb_to_grey
from rws.robustness.corruptions._resample import clipped_zoom, next_pow2, zoom_crop
from rws.robustness.corruptions._textures import frost_texture, plasma_fractal
from rws.robustness.corruptions.registry import register_corruption, register_variant


@register_corruption(
    "snow", family="weather",
    approximate="its motion blur is rws's own line kernel, not ImageMagick's MotionBlurImage",
)  # fmt: skip
def snow(x: torch.Tensor, c: tuple[float, ...], *, generator: torch.Generator) -> torch.Tensor:
    """Falling snow: a thresholded, zoomed noise layer smeared by a motion blur, added twice.

    ``c = (mean, std, zoom, threshold, blur radius, blur σ, image weight)``. A grey layer
    ``N(mean, std²)`` is centre-zoomed, values below the threshold are zeroed, it is quantised to
    uint8, blurred along a random angle in [-135°, -45°) (rws's line kernel, not ImageMagick's;
    see ``motion_blur``) and added with its 180° rotation to the image, whose grey value brightens
    it first: ``w·x + (1 - w)·max(x, 1.5·grey + 0.5)``.
    """
    return _snow(x, c, generator, imagecorruptions=False)


@register_variant("snow", table="imagecorruptions")
def snow_imagecorruptions(
    x: torch.Tensor, c: tuple[float, ...], *, generator: torch.Generator
) -> torch.Tensor:
    """The ``imagecorruptions`` package's snow: as ``snow``, but the zoomed layer is blurred
    unquantised and untrimmed, then its top-left ``H × W`` pixels kept (that package's motion
    blur is rws's line kernel)."""
    return _snow(x, c, generator, imagecorruptions=True)


def _snow(
    x: torch.Tensor, c: tuple[float, ...], generator: torch.Generator, *, imagecorruptions: bool
) -> torch.Tensor:
    mean, std, zoom, threshold, radius, sigma, weight = (float(v) for v in c)
    n, _, h, w = x.shape
    layer = _rng.normal((n, 1, h, w), generator, x, mean, std)
    layer = zoom_crop(layer, zoom) if imagecorruptions else clipped_zoom(layer, zoom)
    layer = layer.masked_fill(layer < threshold, 0.0).clamp_(0.0, 1.0)
    if not imagecorruptions:  # the reference hands ImageMagick a uint8 PNG
        layer = layer.mul_(255.0).floor_().div_(255.0)
    angle = _rng.uniform((n,), generator, x, -135.0, -45.0)
    layer = _filters.motion_blur(layer, radius, sigma, angle)[..., :h, :w]
    layer = layer.mul_(255.0).round_().div_(255.0)  # the blurred layer came back as uint8
    out = torch.maximum(x, rgb_to_grey(x).mul_(1.5).add_(0.5)).mul_(1.0 - weight)
    return out.add_(x, alpha=weight).add_(layer.add_(layer.flip(-2, -1)))


@register_corruption(
    "frost", family="weather",
    approximate="a procedural frost texture instead of the reference's frost photographs "
    "(darker, smoother, less coloured: milder than CIFAR-10-C frost)",
)  # fmt: skip
def frost(x: torch.Tensor, c: tuple[float, float], *, generator: torch.Generator) -> torch.Tensor:
    """``image weight · x + frost weight · texture``, ``c = (image weight, frost weight)``.

    The reference crops one of its frost photographs; rws has no such files and uses a procedural
    texture of the same brightness range instead
    (:func:`rws.robustness.corruptions._textures.frost_texture`).
    """
    n, _, h, w = x.shape
    return frost_texture(n, h, w, generator, x).mul_(float(c[1])).add_(x, alpha=float(c[0]))


@register_corruption("fog", family="weather")
def fog(x: torch.Tensor, c: tuple[float, float], *, generator: torch.Generator) -> torch.Tensor:
    """Plasma-fractal haze ``c = (strength, decay)``: ``(x + s·plasma) · max / (max + s)``.

    The fractal is ``next_pow2(max(H, W))`` on a side (32 for CIFAR, 256 for 224-pixel ImageNet, as
    in the reference), cropped to the image; ``max`` is the image's maximum over all channels.
    """
    strength, decay = float(c[0]), float(c[1])
    n, _, h, w = x.shape
    fractal = plasma_fractal(n, next_pow2(max(h, w)), decay, generator, x)[:, None, :h, :w]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    # kept in this order: the shipped signature library was trained on it, bit for bit
    return (x + strength * fractal) * peak / (peak + strength)
