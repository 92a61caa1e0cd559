"""PGD (Madry et al. 2018), L∞ and L2: random start, fixed step, restarts keep the worst case."""

from __future__ import annotations

import torch
from torch import nn

from rws.robustness.attacks._core import direction, loss_grad, predict, project, random_noise
from rws.robustness.attacks.losses import ce_loss
from rws.robustness.attacks.registry import register_attack

DEFAULT_STEPS = 10


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s rule ``2.5·ε / steps`` (ε = 8/255, 10 steps → 2/255, the RiFT setting)."""
    return 2.5 * eps / steps


@register_attack(
    "pgd",
    summary="Projected gradient descent on CE with a random start (L∞ or L2)",
    url="https://arxiv.org/abs/1706.06083",
    steps=DEFAULT_STEPS,
)
def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int | None = None,
    step_size: float | None = None,
    restarts: int = 1,
    generator: torch.Generator,
) -> torch.Tensor:
    """Standard PGD: every example runs all steps and the last iterate is returned.

    Each restart starts from fresh uniform noise in the ball and is run only on examples no earlier
    restart has fooled; an example keeps a fooling restart's result, else the one with the highest
    cross-entropy. Misclassified clean examples are attacked too (RiFT builds its adversarial set
    so).

    Args:
        model: Classifier in eval mode returning logits.
        x: Clean images ``(N, ...)`` in [0, 1], fp32.
        y: Labels ``(N,)``.
        eps: Radius of the ball.
        norm: ``"linf"`` or ``"l2"``.
        steps: Iterations (default 10).
        step_size: Step length (default ``2.5·ε/steps``).
        restarts: Random restarts (≥ 1).
        generator: Source of the random starts.

    Returns:
        ``x_adv`` with the shape of ``x``.
    """
    steps = DEFAULT_STEPS if steps is None else steps
    alpha = default_step_size(eps, steps) if step_size is None else step_size
    x_out = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        noise = random_noise(x.shape, eps, norm, generator, x.device)  # full batch: see _core
        idx = (~fooled).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xs, ys = x[idx], y[idx]
        xa = project(xs + noise[idx], xs, eps, norm)
        for _ in range(steps):
            _, _, grad = loss_grad(model, xa, ys, ce_loss)
            xa = project(xa + alpha * direction(grad, norm), xs, eps, norm)
        if restarts == 1:  # nothing to compare against: the last iterate is the result
            x_out[idx] = xa
            break
        logits = predict(model, xa)
        loss = ce_loss(logits, ys)
        now_fooled = logits.argmax(1) != ys
        better = now_fooled | (loss > best_loss[idx])
        x_out[idx[better]] = xa[better]
        best_loss[idx[better]] = loss[better]
        fooled[idx[now_fooled]] = True
    return x_out
