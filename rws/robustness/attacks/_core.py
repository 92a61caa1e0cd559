"""Shared pieces of the gradient attacks: ball projection, steps, random starts, loss gradients.

All functions work on a batch ``(N, ...)`` and treat each example independently, so an attack's
result for one example does not depend on which other examples share its batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> (N,) per example

_TINY = 1e-12


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))  # (N,) -> (N, 1, 1, 1)


def l2_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, ``(N, ...) -> (N,)``."""
    return t.flatten(1).norm(p=2, dim=1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the ε-ball around ``x``, then onto the box [0, 1].

    Clipping to [0, 1] after the ball projection never leaves the ball: each coordinate only moves
    towards ``x``, which lies in the box.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        scale = (eps / (l2_norm(delta) + _TINY)).clamp(max=1.0)
        delta = delta * _view(scale, delta)
    return (x + delta).clamp(0.0, 1.0)


def direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: ``sign(g)`` for L∞, ``g / ‖g‖₂`` for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _view(l2_norm(grad) + _TINY, grad)


def random_noise(
    shape: torch.Size, eps: float, norm: str, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """A random start: uniform in the L∞ cube, or on the L2 sphere of radius ε (as AutoAttack).

    The noise is drawn on the generator's device and moved to ``device``, so one CPU generator
    drives attacks on any device reproducibly.
    """
    if norm == "linf":
        u = torch.rand(shape, generator=generator, device=generator.device)
        noise = (2.0 * u - 1.0) * eps
    else:
        g = torch.randn(shape, generator=generator, device=generator.device)
        noise = g * _view(eps / (l2_norm(g) + _TINY), g)
    return noise.to(device=device, dtype=torch.float32)


def loss_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example loss ``(N,)``, logits ``(N, C)`` and input gradient of ``loss.sum()``, all
    fp32 (under autocast the logits are cast up before the loss)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()
        loss = loss_fn(logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), logits.detach(), grad.detach()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """fp32 logits without a graph."""
    return model(x).float()


def correct_mask(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor | None
) -> torch.Tensor:
    """Examples to attack: ``active`` (all by default) and correctly classified on clean input."""
    mask = predict(model, x).argmax(1) == y
    return mask if active is None else mask & active
