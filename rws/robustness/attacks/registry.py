"""Attack registry: ``register_attack``, ``get_attack``, ``list_attacks``.

Every registered attack is a function with one signature (:class:`AttackFn`); :func:`rws.attack`
validates the arguments, puts the model in eval mode and calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from rws.registry import Registry


class AttackFn(Protocol):
    """What a registered attack is: validated fp32 inputs in, ``x_adv`` (same shape) out."""

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        norm: str,
        steps: int | None,
        step_size: float | None,
        restarts: int,
        generator: torch.Generator,
    ) -> torch.Tensor: ...


ATTACKS: Registry[AttackFn] = Registry("attack")


def register_attack(
    name: str, *, summary: str = "", url: str = "", **info: Any
) -> Callable[[AttackFn], AttackFn]:
    """Register an attack under ``name``.

    ``info`` documents the entry: ``steps`` (default budget), ``min_classes``, ``single_step``.

    Example:
        >>> from rws.robustness.attacks import ATTACKS
        >>> ATTACKS.entry("pgd").info["steps"]
        10
    """
    return ATTACKS.register(name, summary=summary, url=url, **info)


def get_attack(name: str) -> AttackFn:
    """The attack function registered under ``name`` (its metadata: ``ATTACKS.entry(name)``);
    raises ``UnknownNameError`` listing the choices.

    Example:
        >>> from rws.robustness.attacks import get_attack
        >>> get_attack("pgd").__name__
        'pgd'
    """
    return ATTACKS.get(name)


def list_attacks(pattern: str = "*") -> list[str]:
    """Names of registered attacks matching a glob.

    Example:
        >>> from rws.robustness.attacks import list_attacks
        >>> "pgd" in list_attacks()
        True
    """
    return ATTACKS.names(pattern)
