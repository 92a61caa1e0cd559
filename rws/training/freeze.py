"""Which parameters learn and which modules train: module fine-tuning's freezing, restored after."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from torch import nn

from rws.errors import UsageError

__all__ = ["frozen_except", "grad_only", "train_mode"]


@contextlib.contextmanager
def grad_only(model: nn.Module, keep: Callable[[str, nn.Parameter], bool]) -> Iterator[None]:
    """``requires_grad`` only on the parameters ``keep(name, p)`` selects; restored afterwards.

    Example:
        >>> with grad_only(model, lambda name, _: name.startswith("fc.")):  # doctest: +SKIP
        ...     loss.backward()  # only fc's parameters get gradients
    """
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(keep(name, p))
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextlib.contextmanager
def frozen_except(model: nn.Module, trainable: Sequence[str]) -> Iterator[None]:
    """Freeze every parameter outside ``trainable`` (nothing when empty); restore ``requires_grad``
    afterwards. An entry names a module (all its parameters learn) or one parameter (e.g.
    ``"layer2.1.conv2.weight"``: only that tensor learns, as the RiFT reference trains).

    Raises:
        UsageError: a name the model lacks, or modules without parameters.
    """
    if not trainable:
        yield
        return
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    unknown = [n for n in trainable if (n not in modules and n not in params) or n == ""]
    if unknown:
        layers = [n for n, m in modules.items() if n and not list(m.children())]
        raise UsageError(
            f"trainable module(s) {', '.join(map(repr, unknown))} not in the model; it has e.g. "
            f"{', '.join(layers[:6])}"
        )
    prefixes = tuple(n + "." for n in trainable if n in modules)
    exact = {n for n in trainable if n in params}
    with grad_only(model, lambda name, _: name in exact or name.startswith(prefixes)):
        if not any(p.requires_grad for p in model.parameters()):
            raise UsageError(f"trainable module(s) {', '.join(trainable)} have no parameters")
        yield


def train_mode(model: nn.Module, trainable: Sequence[str], *, others: str = "eval") -> None:
    """Train mode for the whole model, or only for the ``trainable`` modules (and their children;
    a parameter name puts its module in train mode) while the others stay in eval mode
    (``others="train"``: every module in train mode, so every BatchNorm re-estimates its running
    statistics, as the RiFT reference fine-tunes)."""
    if not trainable or others == "train":
        model.train()
        return
    model.eval()
    modules = dict(model.named_modules())
    for name in trainable:
        owner = name if name in modules else name.rpartition(".")[0]
        modules[owner].train()
