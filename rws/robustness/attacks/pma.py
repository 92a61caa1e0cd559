"""PMA, the probability-margin attack (Xie et al. 2024, arXiv 2411.15210; code xieyong0/PMA).

Loss ``p_max - p_y`` on softmax probabilities, optimised with the Margin-Decomposition schedule:
two rounds of K sign-gradient steps from a uniform random start; within a round the step size
is cosine-decayed from 2ε and restarted at K/2; the first half maximises ``-p_y`` (round 0) or
``p_max`` (round 1), the second half ``p_max - p_y``. Fooled examples leave the batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rws.robustness.attacks._core import (
    LossFn,
    correct_mask,
    direction,
    loss_grad,
    predict,
    project,
    random_noise,
)
from rws.robustness.attacks.losses import (
    max_other_probability,
    neg_true_probability,
    probability_margin,
)
from rws.robustness.attacks.registry import register_attack

DEFAULT_STEPS = 100
ROUNDS = 2


def step_schedule(steps: int, step0: float) -> list[float]:
    """Step sizes of one round: cosine from ``step0`` towards 0 over each half, restarted at K/2."""
    half = steps // 2
    sizes = []
    for i in range(steps):
        t, period = (i, half) if i < half else (i - half, steps - half)
        sizes.append(step0 * 0.5 * (1.0 + math.cos(math.pi * t / period)))
    return sizes


def phase_loss(round_: int, i: int, steps: int) -> LossFn:
    """Loss of step ``i``: ``-p_y`` / ``p_max`` in the first half (round 0 / 1), then the margin."""
    if i >= steps // 2:
        return probability_margin
    return neg_true_probability if round_ == 0 else max_other_probability


@register_attack(
    "pma",
    summary="Probability-margin attack: p_max − p_y with the Margin-Decomposition schedule",
    url="https://arxiv.org/abs/2411.15210",
    steps=DEFAULT_STEPS,
)
def pma(
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
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """PMA on the correctly classified (and ``active``) examples.

    Args:
        model: Classifier in eval mode returning logits.
        x: Clean images ``(N, ...)`` in [0, 1], fp32.
        y: Labels ``(N,)``.
        eps: Radius of the ball.
        norm: ``"linf"`` (sign steps, as the paper) or ``"l2"`` (normalised-gradient steps).
        steps: Steps K per round (default 100; each restart runs 2 rounds, 2K steps).
        step_size: Initial step of the cosine schedule (default 2ε).
        restarts: Repetitions of the two rounds, each on the examples not yet fooled.
        generator: Source of the random starts.
        active: Optional ``(N,)`` mask of the examples to attack.

    Returns:
        ``x_adv``: the first misclassified iterate where one was found, else the point with the
        highest probability margin; ``x`` itself for examples not attacked.
    """
    steps = DEFAULT_STEPS if steps is None else steps
    sizes = step_schedule(steps, 2.0 * eps if step_size is None else step_size)
    todo = correct_mask(model, x, y, active)
    x_out = x.clone()
    best = torch.full((x.shape[0],), float("-inf"), device=x.device)
    for _ in range(restarts):
        for round_ in range(ROUNDS):
            noise = random_noise(x.shape, eps, norm, generator, x.device)  # full batch: see _core
            pos = todo.nonzero().squeeze(1)
            if pos.numel() == 0:
                return x_out
            xs, ys = x[pos], y[pos]
            xa = project(xs + noise[pos], xs, eps, norm)
            for i in range(steps + 1):
                if i < steps:
                    _, logits, grad = loss_grad(model, xa, ys, phase_loss(round_, i, steps))
                else:
                    logits = predict(model, xa)
                margin = probability_margin(logits, ys)
                hit = logits.argmax(1) != ys
                better = hit | (margin > best[pos])
                x_out[pos[better]] = xa[better]
                best[pos[better]] = margin[better]
                todo[pos[hit]] = False
                keep = ~hit
                if i == steps or not keep.any():
                    break
                pos, xs, ys, xa, grad = pos[keep], xs[keep], ys[keep], xa[keep], grad[keep]
                xa = project(xa + sizes[i] * direction(grad, norm), xs, eps, norm)
    return x_out
