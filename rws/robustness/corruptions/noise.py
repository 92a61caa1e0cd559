"""Noise corruptions: gaussian_noise, shot_noise, impulse_noise and the extra speckle_noise."""

from __future__ import annotations

import torch

from rws.robustness.corruptions import _poisson, _rng
from rws.robustness.corruptions.registry import register_corruption


@register_corruption("gaussian_noise", family="noise")
def gaussian_noise(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation ``c`` per pixel and channel."""
    return _rng.normal(tuple(x.shape), generator, x, std=c).add_(x)


@register_corruption("shot_noise", family="noise")
def shot_noise(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Poisson (photon) noise: ``Poisson(x·c) / c``, ``c`` photons at full intensity.

    Sampled exactly by table inversion (:func:`_poisson.poisson_div`), not ``torch.poisson``.
    """
    return _poisson.poisson_div(x, float(c), generator)


@register_corruption("impulse_noise", family="noise")
def impulse_noise(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Salt-and-pepper noise (skimage ``random_noise(mode="s&p")``): a share ``c`` of the values,
    per pixel and channel, set to 0 or 1 with equal odds.

    One uniform ``u`` per value decides both: ``u < c/2`` salt, ``c/2 ≤ u < c`` pepper (skimage
    draws "flipped" and "salted" separately; the joint law is the same).
    """
    u = _rng.uniform(tuple(x.shape), generator, x)
    return x.masked_fill(u < c, 0.0).masked_fill_(u < 0.5 * c, 1.0)


@register_corruption("speckle_noise", family="noise", extra=True)
def speckle_noise(x: torch.Tensor, c: float, *, generator: torch.Generator) -> torch.Tensor:
    """Multiplicative noise ``x + x·N(0, c²)`` (validation corruption)."""
    return torch.addcmul(x, x, _rng.normal(tuple(x.shape), generator, x, std=c))
