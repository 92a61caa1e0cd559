"""FGSM (Goodfellow et al. 2015): one step of size ε along the loss gradient (FGM for L2)."""

from __future__ import annotations

import torch
from torch import nn

from rws.robustness.attacks._core import direction, loss_grad, project
from rws.robustness.attacks.losses import ce_loss
from rws.robustness.attacks.registry import register_attack


@register_attack(
    "fgsm",
    summary="Fast gradient sign method: one ε-step along sign(∇CE) (L2: along ∇CE/‖∇CE‖)",
    url="https://arxiv.org/abs/1412.6572",
    steps=1,
    single_step=True,
)
def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int | None = None,
    step_size: float | None = None,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One gradient step from ``x``; ``step_size`` defaults to ε (larger steps are projected back).

    Args:
        model: Classifier in eval mode returning logits.
        x: Clean images ``(N, ...)`` in [0, 1], fp32.
        y: Labels ``(N,)``.
        eps: Radius of the ball.
        norm: ``"linf"`` or ``"l2"``.
        steps: Unused (always one step).
        step_size: Step length; ε by default.
        restarts: Unused (deterministic).
        generator: Unused (deterministic).

    Returns:
        ``x_adv`` with the shape of ``x``.
    """
    _, _, grad = loss_grad(model, x, y, ce_loss)
    alpha = eps if step_size is None else step_size
    return project(x + alpha * direction(grad, norm), x, eps, norm)
