"""Random draws from an explicit ``torch.Generator`` (never a global RNG) on the batch's device.

Draws happen on the generator's device and are then moved, so a CPU generator gives the same numbers
for a CPU or a CUDA batch.
"""

from __future__ import annotations

import torch


def make_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """``generator`` itself, or a fresh one on ``device`` seeded from the OS entropy pool."""
    if generator is not None:
        return generator
    g = torch.Generator(device=device)
    g.seed()
    return g


def uniform(
    shape: tuple[int, ...],
    g: torch.Generator,
    like: torch.Tensor,
    low: float = 0.0,
    high: float = 1.0,
) -> torch.Tensor:
    """Uniform samples in ``[low, high)`` with ``like``'s dtype and device."""
    u = torch.rand(shape, generator=g, device=g.device, dtype=like.dtype)
    if (low, high) != (0.0, 1.0):
        u.mul_(high - low).add_(low)
    return u.to(like.device)


def normal(
    shape: tuple[int, ...],
    g: torch.Generator,
    like: torch.Tensor,
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Normal samples with ``like``'s dtype and device."""
    z = torch.randn(shape, generator=g, device=g.device, dtype=like.dtype)
    if (mean, std) != (0.0, 1.0):
        z.mul_(std).add_(mean)
    return z.to(like.device)


def randint(
    shape: tuple[int, ...],
    g: torch.Generator,
    device: torch.device,
    low: int,
    high: int,
    dtype: torch.dtype = torch.int64,
) -> torch.Tensor:
    """Integers in ``[low, high)`` (like ``np.random.randint``) as ``dtype`` on ``device``."""
    return torch.randint(low, high, shape, generator=g, device=g.device, dtype=dtype).to(device)


def poisson(rate: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Poisson samples with the given rates, on ``rate``'s device."""
    return torch.poisson(rate.to(g.device), generator=g).to(rate.device)
