"""PMA, the probability-margin attack (Xie et al. 2024, arXiv 2411.15210; code xieyong0/PMA).

Loss ``p_max - p_y`` on softmax probabilities, optimised as the reference's ``MDAttack`` (the
Margin-Decomposition schedule): two rounds of K sign-gradient steps, each from a fresh uniform
random start on the examples not yet fooled. Step ``i`` of a round (change point ``c = K/2``):

* loss: ``+p_y`` at ``i = 0``; ``-p_y`` (round 0) or ``p_max`` (round 1) for ``0 < i < c``;
  ``p_max - p_y`` from ``i ≥ c`` on;
* size: ``a·½(1 + cos(π(i − 1)/(K − c)))`` for ``i ≤ c`` and ``a·½(1 + cos(π(i − c − 1)/(K − c)))``
  for ``i > c``, with ``a = 2ε`` (:func:`step_schedule`): the cosine peaks at step 1 and restarts
  at step ``⌊c⌋ + 1``.

The first step *raises* the true-class probability, as the reference (and the MD attack it
descends from) does: with a step of almost 2ε it moves the random start to the vertex of the ε-ball
that favours the true class, and step 1, a full 2ε step on the early loss, then crosses the ball
from there. It is kept because the reference's numbers include it. An example leaves the batch at
the first iterate that misclassifies it, in both.

Departures from the reference code: the random start is clipped to [0, 1] before the first
forward pass (the reference feeds it unclipped); noise is drawn for the whole batch so that
results do not depend on batching; an example never fooled returns its highest-margin iterate (the
reference returns the last), which changes no robust accuracy; ``norm="l2"`` (normalised-gradient
steps) and ``step_size`` (the initial ``a``) are rws extensions.
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


def true_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``+p_y``: the loss of PMA's first step in each round (it raises the true class)."""
    return -neg_true_probability(logits, y)


def step_schedule(steps: int, step0: float) -> list[float]:
    """Step sizes of one round of ``steps`` steps, the reference's cosine with restart.

    Example:
        >>> step_schedule(4, 1.0)
        [0.5, 1.0, 0.5, 1.0]
    """
    change = steps / 2
    period = steps - change
    sizes = []
    for i in range(steps):
        t = i - change - 1 if i > change else i - 1
        sizes.append(step0 * 0.5 * (1.0 + math.cos(math.pi * t / period)))
    return sizes


def phase_loss(round_: int, i: int, steps: int) -> LossFn:
    """Loss of step ``i``: ``p_y`` at step 0, ``-p_y`` / ``p_max`` (round 0 / 1) before K/2,
    then the margin ``p_max - p_y``."""
    if i == 0:
        return true_probability
    if i >= steps / 2:
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
