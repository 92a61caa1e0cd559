"""Flags for gradient masking and unreliable evaluations.

After AutoAttack's ``checks.py`` and Carlini et al. 2019 ("On evaluating adversarial robustness"):
zero input gradients, randomness in the forward pass, probabilities returned instead of logits,
robust accuracy rising with more steps or a larger ε, and accuracy above chance at a very large ε.
Each check returns a list of one-line warnings (empty when nothing is suspicious).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from itertools import pairwise

import torch
from torch import nn

from rws.robustness.attacks._core import loss_grad, predict
from rws.robustness.attacks.api import attack
from rws.robustness.attacks.losses import ce_loss
from rws.runtime.modes import eval_mode

logger = logging.getLogger(__name__)

LARGE_LINF = 0.5  # half the pixel range: any image is within reach of a grey one


def check_zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Warn when the input gradient of the cross-entropy is exactly zero for some examples."""
    with eval_mode(model):
        _, _, grad = loss_grad(model, x.float(), y.long(), ce_loss)
    zero = int((grad.flatten(1).abs().sum(1) == 0).sum())
    logger.info("zero-gradient check: %d of %d examples", zero, x.shape[0])
    if zero == 0:
        return []
    return [
        f"zero input gradients: {zero} of {x.shape[0]} examples have an all-zero loss gradient; "
        "gradient-based attacks cannot be trusted on this model (gradient masking?)"
    ]


def check_randomness(
    model: nn.Module, x: torch.Tensor, *, repeats: int = 3, tol: float = 1e-4
) -> list[str]:
    """Warn when identical eval-mode forward passes return different outputs."""
    with eval_mode(model):
        outs = [predict(model, x.float()) for _ in range(repeats)]
    scale = outs[0].abs().max().clamp(min=1e-12)
    diff = max(float((o - outs[0]).abs().max() / scale) for o in outs[1:])
    logger.info("randomness check: max relative output difference %.3g", diff)
    if diff <= tol:
        return []
    return [
        f"randomness: {repeats} identical forward passes differ by up to {diff:.3g} (relative); "
        "evaluate a randomized defense with EOT, not a single-pass attack"
    ]


def check_logits(model: nn.Module, x: torch.Tensor, *, tol: float = 1e-4) -> list[str]:
    """Warn when the model seems to return probabilities (softmax) instead of logits."""
    with eval_mode(model):
        out = predict(model, x.float())
    probs = (
        bool((out >= -tol).all())
        and bool((out <= 1 + tol).all())
        and bool(((out.sum(1) - 1).abs() < tol).all())
    )
    if not probs:
        return []
    return [
        "softmax outputs: the model returns probabilities, not logits; cross-entropy gradients "
        "vanish on confident examples: attack the logits"
    ]


def check_monotone(results: Mapping[float, float], *, what: str, tol: float = 0.01) -> list[str]:
    """Warn where robust accuracy rises although the budget (``what``: steps or eps) grows.

    Args:
        results: Budget → robust accuracy in [0, 1], measured with the same attack and seed.
        what: Name of the budget in the message (``"steps"`` or ``"eps"``).
        tol: Rise tolerated as noise.
    """
    out = []
    items = sorted(results.items())
    for (b0, a0), (b1, a1) in pairwise(items):
        if a1 > a0 + tol:
            out.append(
                f"robust accuracy rises with more {what}: {a0:.2%} at {what}={b0:g} -> "
                f"{a1:.2%} at {what}={b1:g}; the attack is not converging (gradient masking?)"
            )
    return out


def check_large_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float | None = None,
    steps: int = 20,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Warn when PGD at a very large ε leaves accuracy above chance (1 / num_classes).

    ε defaults to 0.5 for L∞ and ``0.5·sqrt(dim)`` for L2 (the L∞ ball's corner distance).
    """
    if eps is None:
        eps = LARGE_LINF if norm == "linf" else LARGE_LINF * math.sqrt(x[0].numel())
    x_adv = attack(model, x, y, "pgd", eps=eps, steps=steps, norm=norm, generator=generator)
    with eval_mode(model):
        logits = predict(model, x_adv)
    acc = float((logits.argmax(1) == y).float().mean())
    chance = 1.0 / logits.shape[1]
    logger.info("large-eps check: PGD-%d at eps=%g leaves %.2f%% accuracy", steps, eps, 100 * acc)
    if acc <= chance:
        return []
    return [
        f"large eps: PGD-{steps} at eps={eps:g} ({norm}) leaves {acc:.2%} accuracy, above chance "
        f"({chance:.2%}); the attack fails where any image is reachable (gradient masking?)"
    ]


def check_gradient_masking(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    steps_results: Mapping[float, float] | None = None,
    eps_results: Mapping[float, float] | None = None,
    large_eps: bool = True,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Run every check; an empty list means no sign of gradient masking was found.

    Args:
        model: The classifier under evaluation.
        x: A few hundred clean images in [0, 1] (more only slows the checks).
        y: Their labels.
        norm: Threat model for the large-ε check.
        steps_results: Measured robust accuracy per number of steps (same attack, seed, ε).
        eps_results: Measured robust accuracy per ε (same attack, seed, steps).
        large_eps: Also run PGD at a very large ε (a few seconds on a small model).
        generator: Seed of the large-ε PGD.

    Returns:
        One-line warnings, empty when nothing is suspicious.

    Example:
        >>> import torch
        >>> from rws.models import create_model
        >>> model = create_model("small-cnn")
        >>> x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
        >>> check_gradient_masking(model, x, y, large_eps=False)
        []
    """
    warnings = (
        check_zero_gradients(model, x, y) + check_randomness(model, x) + check_logits(model, x)
    )
    if steps_results:
        warnings += check_monotone(steps_results, what="steps")
    if eps_results:
        warnings += check_monotone(eps_results, what="eps")
    if large_eps:
        warnings += check_large_eps(model, x, y, norm=norm, generator=generator)
    for w in warnings:
        logger.warning("%s", w)
    return warnings
