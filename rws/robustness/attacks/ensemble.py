"""``autoattack-lite``: APGD-CE → APGD-T (targeted DLR) → PMA, worst case per example.

A lighter AutoAttack (no FAB-T, no Square): each attack runs only on the examples that every earlier
one failed to fool, and an example keeps the first adversarial point found.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from rws.robustness.attacks._core import correct_mask, predict
from rws.robustness.attacks.apgd import apgd
from rws.robustness.attacks.pma import pma
from rws.robustness.attacks.registry import register_attack

logger = logging.getLogger(__name__)

MEMBERS: tuple[tuple[str, Callable[..., torch.Tensor]], ...] = (
    ("apgd", partial(apgd, loss="ce")),
    ("apgd-t", partial(apgd, loss="dlr-targeted")),
    ("pma", pma),
)


@register_attack(
    "autoattack-lite",
    summary="APGD-CE → APGD-T → PMA on the survivors, worst case per example",
    url="https://arxiv.org/abs/2003.01690",
    steps=100,
)
def autoattack_lite(
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
    """Run the members in turn on the examples still correctly classified.

    Every member starts from the generator state the ensemble was called with, so its result on an
    example equals what the member alone would find (each attack treats examples independently); the
    ensemble is therefore at least as strong as each member, example by example.

    Args:
        model: Classifier in eval mode returning logits.
        x: Clean images ``(N, ...)`` in [0, 1], fp32.
        y: Labels ``(N,)``.
        eps: Radius of the ball.
        norm: ``"linf"`` or ``"l2"``.
        steps: Budget of each member (default 100 each; APGD-T runs once per target class).
        step_size: Initial step of each member (default 2ε).
        restarts: Restarts of each member.
        generator: Source of the random starts.

    Returns:
        ``x_adv``: the first member's adversarial point per example, else APGD-CE's highest-loss
        point; ``x`` for examples misclassified on clean input.
    """
    n_classes = predict(model, x[:1]).shape[1]
    state = generator.get_state()
    todo = correct_mask(model, x, y, None)
    x_out = x.clone()
    for k, (name, member) in enumerate(MEMBERS):
        if name == "apgd-t" and n_classes < 4:
            logger.warning(
                "autoattack-lite: skipping apgd-t, it needs 4 classes (got %d)", n_classes
            )
            continue
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        generator.set_state(state)
        adv = member(
            model,
            x,
            y,
            eps=eps,
            norm=norm,
            steps=steps,
            step_size=step_size,
            restarts=restarts,
            generator=generator,
            active=todo,
        )
        hit = predict(model, adv[idx]).argmax(1) != y[idx]
        take = hit if k > 0 else torch.ones_like(hit)
        x_out[idx[take]] = adv[idx[take]]
        todo[idx[hit]] = False
        logger.debug("autoattack-lite: %s fooled %d of %d", name, int(hit.sum()), idx.numel())
    return x_out
