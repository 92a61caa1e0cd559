"""``attack()``: validate arguments, fix eval mode, precision and seeds, then run a registered attack."""

from __future__ import annotations

import math
from numbers import Real
from typing import Literal

import torch
from torch import nn

from rws.errors import UsageError
from rws.robustness.attacks._core import predict
from rws.robustness.attacks.registry import ATTACKS
from rws.runtime.checks import check_positive
from rws.runtime.modes import eval_mode
from rws.runtime.precision import Precision, autocast, check_precision
from rws.runtime.seed import generator as seeded_generator

Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")
DEFAULT_SEED = 0


def parse_eps(value: str | float) -> float:
    """A radius from a number or a string such as ``"8/255"`` or ``"0.5"``.

    Raises:
        UsageError: Unparsable, not finite, or not positive.

    Example:
        >>> parse_eps("8/255") == 8 / 255
        True
    """
    if isinstance(value, str):
        num, sep, den = value.strip().partition("/")
        try:
            eps = float(num) / float(den) if sep else float(num)
        except (ValueError, ZeroDivisionError):
            raise UsageError(
                f"cannot parse eps {value!r}; use a number such as 0.03 or a fraction like '8/255'"
            ) from None
    elif isinstance(value, Real) and not isinstance(value, bool):
        eps = float(value)
    else:
        raise UsageError(f"eps must be a number or a string such as '8/255', got {value!r}")
    if not math.isfinite(eps) or eps <= 0:
        raise UsageError(f"eps must be a positive finite number, got {value!r}")
    return eps


def _check_tensors(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise UsageError(
            "x must be a floating-point tensor of shape (N, ...) with values in [0, 1]"
        )
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise UsageError(
            f"y must be a 1-D tensor of {x.shape[0]} labels matching x, got shape "
            f"{list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise UsageError(f"y must hold integer class labels, got dtype {y.dtype}")
    if x.numel() > 0 and not torch.isfinite(x).all():
        raise UsageError("x contains NaN or Inf values")
    lo, hi = (float(x.min()), float(x.max())) if x.numel() > 0 else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise UsageError(
            f"x must be in [0, 1] (normalise inside the model), got values in [{lo:.4g}, {hi:.4g}]"
        )
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            raise UsageError(
                f"attacks run in fp32 but the model has {p.dtype} weights; pass model.float()"
            )
        if p.device != x.device:
            raise UsageError(f"the model is on {p.device} but x is on {x.device}; move one of them")
        break


def _check_output(logits: torch.Tensor, y: torch.Tensor, method: str, min_classes: int) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise UsageError(
            f"the model must return (N, num_classes) logits, got shape {list(logits.shape)}"
        )
    n_classes = logits.shape[1]
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise UsageError(
            f"labels must be in [0, {n_classes - 1}], got [{int(y.min())}, {int(y.max())}]"
        )
    if n_classes < min_classes:
        raise UsageError(
            f"{method} needs at least {min_classes} classes, the model has {n_classes}"
        )


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str = "pgd",
    *,
    eps: float | str = 8 / 255,
    steps: int | None = None,
    norm: Norm = "linf",
    restarts: int = 1,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """Adversarial examples for ``model`` within the ε-ball around ``x`` (and inside [0, 1]).

    The model runs in eval mode (each submodule's mode is restored afterwards), on ``x``'s
    device, in fp32 with autocast off unless ``precision`` asks for bf16/fp16 autocast of its
    forwards; losses, input gradients and the iterates stay fp32 either way. Without
    ``generator`` the random starts are seeded with 0 on the CPU; random starts are drawn on the
    generator's device.

    Args:
        model: Classifier returning logits; normalisation inside the model.
        x: Images ``(N, ...)`` in [0, 1].
        y: Labels ``(N,)``.
        method: A registered attack, see :func:`list_attacks`.
        eps: Radius, a number or a string such as ``"8/255"``.
        steps: Iterations (each attack's default budget when None: pgd 10, apgd 100, pma 100 …).
        norm: ``"linf"`` or ``"l2"``.
        restarts: Random restarts; an example keeps the worst case.
        step_size: Step length (PGD, FGSM) or initial step (APGD, PMA); the attack's rule when None.
        generator: Seeded ``torch.Generator`` for the random starts (any device).
        batch_size: Attack in chunks of this many examples (all at once when None).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: autocast of the model's forwards.

    Returns:
        ``x_adv``, float32, the shape of ``x``, on ``x``'s device.

    Raises:
        UnknownNameError: ``method`` is not registered.
        UsageError: A bad budget, norm, input range, shape, dtype or device.

    Example:
        >>> import torch
        >>> from rws.models import create_model
        >>> model = create_model("small-cnn")
        >>> x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
        >>> x_adv = attack(model, x, y, "pgd", eps="8/255", steps=2)
        >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
        True
    """
    entry = ATTACKS.entry(method)
    eps_f = parse_eps(eps)
    if norm not in NORMS:
        raise UsageError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    if norm == "linf" and eps_f > 1:  # images lie in [0, 1]
        raise UsageError(f"eps {eps_f:g}: an L∞ radius must be in (0, 1], e.g. 8/255")
    check_positive("steps", steps, optional=True)
    check_positive("restarts", restarts, optional=False)
    check_positive("batch_size", batch_size, optional=True)
    if entry.info.get("single_step") and (steps not in (None, 1) or restarts != 1):
        raise UsageError(f"{method} is a single-step attack; it takes no steps or restarts")
    if step_size is not None and (
        isinstance(step_size, bool)
        or not isinstance(step_size, Real)
        or not math.isfinite(step_size)
        or step_size <= 0
    ):
        raise UsageError(f"step_size must be a positive finite number, got {step_size!r}")
    check_precision(precision)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise UsageError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    _check_tensors(model, x, y)

    x = x.detach().to(torch.float32)
    y = y.detach().to(device=x.device, dtype=torch.long)
    if x.shape[0] == 0:
        return x.clone()
    gen = generator if generator is not None else seeded_generator(DEFAULT_SEED)
    chunk = batch_size or x.shape[0]
    step_size = None if step_size is None else float(step_size)
    with eval_mode(model), autocast(precision, x.device):
        _check_output(predict(model, x[:1]), y, method, entry.info.get("min_classes", 2))
        kw = dict(eps=eps_f, norm=norm, steps=steps, step_size=step_size, restarts=restarts)
        parts = [
            entry.obj(model, x[i : i + chunk], y[i : i + chunk], generator=gen, **kw)
            for i in range(0, x.shape[0], chunk)
        ]
    return torch.cat(parts).detach()
