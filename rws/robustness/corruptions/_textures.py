"""Procedural textures: fog's plasma fractal and the frost texture standing in for the photos.

Both are generated in a batch, one independent texture per image, from the caller's generator.
"""

from __future__ import annotations

import math

import torch

from rws.robustness.corruptions import _rng
from rws.robustness.corruptions._resample import next_pow2


def plasma_fractal(
    n: int, mapsize: int, decay: float, g: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """``n`` diamond-square height maps ``(n, mapsize, mapsize)`` in [0, 1], as the reference's.

    Starting from a zero corner and a wibble of 100, each level sets square centres to the mean of
    their corners and diamond centres to the mean of their four neighbours (wrapping around), each
    plus ``wibble · U(-wibble, wibble)``; the wibble is divided by ``decay`` per level.
    ``mapsize`` must be a power of two.
    """
    m = torch.zeros((n, mapsize, mapsize), dtype=like.dtype, device=like.device)
    step, wibble = mapsize, 100.0

    def wibbled(total: torch.Tensor) -> torch.Tensor:
        return total / 4 + wibble * _rng.uniform(tuple(total.shape), g, like, -wibble, wibble)

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        m[:, half::step, half::step] = wibbled(squares)
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        top = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        m[:, 0::step, half::step] = wibbled(top)
        left = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        m[:, half::step, 0::step] = wibbled(left)
        step //= 2
        wibble /= decay
    flat = m.reshape(n, -1)
    lo = flat.amin(1, keepdim=True)
    hi = flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(n, mapsize, mapsize)


def frost_texture(n: int, h: int, w: int, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``n`` RGB frost textures ``(n, 3, h, w)`` in [0, 1], a stand-in for the frost photos.

    Ice needles are white noise filtered in the Fourier domain by four elongated Gaussians at random
    orientations (needles ≈ 0.15 of the image side long, ≈ 1–2 pixels wide), rectified; a
    plasma fractal adds the cloudy base. Each texture gets a random mean level (0.35–0.8) and spread
    (standard deviation 0.08–0.17), the spans of the reference photos, and a random cold tint from
    blue-grey to white.
    """
    side = max(h, w)
    noise = _rng.normal((n, h, w), g, like)
    fy = torch.fft.fftfreq(h, device=like.device, dtype=like.dtype).view(1, 1, h, 1)
    fx = torch.fft.rfftfreq(w, device=like.device, dtype=like.dtype).view(1, 1, 1, -1)
    theta = _rng.uniform((n, 4), g, like, 0.0, math.pi).view(n, 4, 1, 1)
    along = fx * torch.cos(theta) + fy * torch.sin(theta)
    across = -fx * torch.sin(theta) + fy * torch.cos(theta)
    length, width = 0.15 * side, max(0.6, 0.008 * side)
    s_along, s_across = 1.0 / (math.pi * length), 1.0 / (math.pi * width)
    gain = torch.exp(-0.5 * (along / s_along) ** 2 - 0.5 * (across / s_across) ** 2).sum(1)
    streaks = torch.fft.irfft2(torch.fft.rfft2(noise) * gain, s=(h, w))  # (n, h, w)
    streaks = streaks / _std_rows(streaks.reshape(n, -1)).clamp_min(1e-12).view(n, 1, 1)
    needles = streaks.clamp_min(0.0) ** 1.5
    needles = needles / needles.reshape(n, -1).amax(1).clamp_min(1e-12).view(n, 1, 1)
    size = next_pow2(side)
    base = plasma_fractal(n, size, 2.0, g, like)[:, :h, :w]
    grey = 0.55 * base + 0.9 * needles  # (n, h, w)
    flat = grey.reshape(n, -1)
    grey = (grey - flat.mean(1).view(n, 1, 1)).div_(_std_rows(flat).clamp_min(1e-12).view(n, 1, 1))
    level = _rng.uniform((n, 1, 1), g, like, 0.35, 0.8)
    spread = _rng.uniform((n, 1, 1), g, like, 0.08, 0.17)
    grey = grey.mul_(spread).add_(level).clamp_(0.0, 1.0)
    t = _rng.uniform((n, 1, 1, 1), g, like)
    cold = torch.tensor([0.78, 0.9, 1.0], dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    tint = cold + t * (1.0 - cold)
    return (grey[:, None] * tint).clamp_(0.0, 1.0)


def _std_rows(x: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation of each row of ``x`` ``(n, m)`` (two passes; ``torch.std`` on
    the CPU is ten times slower here)."""
    centred = x - x.mean(1, keepdim=True)
    return centred.square_().sum(1).div_(max(x.shape[1] - 1, 1)).sqrt_()
