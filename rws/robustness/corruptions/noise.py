"""Noise corruptions: gaussian_noise, shot_noise, impulse_noise and the extra speckle_noise."""

from __future__ import annotations

import torch

from rws.robustness.corruptions import _rng
from rws.robustness.corruptions.registry import register_corruption


@register_corruption("gaussian_noise", family="noise")
def gaussian_noise(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation ``c`` per pixel and channel."""
    return x + _rng.normal(tuple(x.shape), generator, x, std=c)


@register_corruption("shot_noise", family="noise")
def shot_noise(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Poisson (photon) noise: ``Poisson(x·c) / c``, ``c`` photons at full intensity."""
    return _rng.poisson(x * c, generator) / c


@register_corruption("impulse_noise", family="noise")
def impulse_noise(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Salt-and-pepper noise (skimage ``random_noise(mode="s&p")``): a share ``c`` of the values,
    per pixel and channel, set to 0 or 1 with equal odds."""
    flipped = _rng.uniform(tuple(x.shape), generator, x) < c
    salted = _rng.uniform(tuple(x.shape), generator, x) < 0.5
    out = torch.where(flipped & salted, torch.ones_like(x), x)
    return torch.where(flipped & ~salted, torch.zeros_like(x), out)


@register_corruption("speckle_noise", family="noise", extra=True)
def speckle_noise(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Multiplicative noise ``x + x·N(0, c²)`` (validation corruption)."""
    return x + x * _rng.normal(tuple(x.shape), generator, x, std=c)
