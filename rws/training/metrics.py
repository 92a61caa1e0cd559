"""Validation during training: top-1 accuracy in batches, and accuracy under the training attack."""

from __future__ import annotations

import math

import torch
from torch import nn

from rws.robustness.attacks import attack
from rws.runtime.seed import derived_seed, generator
from rws.training.config import TrainConfig

__all__ = ["accuracy", "adversarial", "robust_accuracy"]


@torch.no_grad()
def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, dev: torch.device
) -> float:
    """Top-1 accuracy of ``model`` (eval mode, on ``dev``) in batches of ``bs``; NaN if empty.

    Example:
        >>> accuracy(model, data.val.x, data.val.y, 256, torch.device("cpu"))  # doctest: +SKIP
        0.953
    """
    if len(y) == 0:
        return math.nan
    model.eval()
    correct = sum(
        int((model(x[a : a + bs].to(dev)).argmax(1).to(y.device) == y[a : a + bs]).sum())
        for a in range(0, len(y), bs)
    )
    return correct / len(y)


def adversarial(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    *,
    batch_size: int | None = None,
) -> torch.Tensor:
    """``config``'s attack (L∞ PGD: ``eps``, ``attack_steps``, ``step_size``) against ``model`` in
    eval mode (its modes are restored afterwards), random starts drawn from ``generator``."""
    return attack(model, x, y, config.attack, eps=config.eps, steps=config.attack_steps,
                  step_size=config.step_size, generator=generator,
                  batch_size=batch_size)  # fmt: skip


def robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, bs: int,
    dev: torch.device,
) -> float:  # fmt: skip
    """Accuracy under the training attack, with random starts fixed for the run's seed."""
    if len(y) == 0:
        return math.nan
    g = generator(derived_seed(config.seed, "val-attack"))
    x_adv = adversarial(model, x.to(dev), y.to(dev), config, g, batch_size=bs)
    return accuracy(model, x_adv, y, bs, dev)
