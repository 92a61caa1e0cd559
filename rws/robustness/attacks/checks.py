"""Flags for gradient masking and unreliable evaluations.

After AutoAttack's ``checks.py`` and Carlini et al. 2019 ("On evaluating adversarial robustness"):
zero input gradients, randomness in the forward pass, probabilities returned instead of logits,
robust accuracy rising with more steps or a larger ε, and accuracy above chance at a very large ε.
Each check returns a list of one-line warnings (empty when nothing is suspicious).
:func:`convergence_checks` (``rws eval --checks``) also measures the attack itself: 4× the
steps, ε on a grid, a second seed; it returns the numbers with the warnings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from rws.robustness.attacks._core import loss_grad, predict
from rws.robustness.attacks.api import attack
from rws.robustness.attacks.losses import ce_loss
from rws.robustness.attacks.registry import ATTACKS
from rws.runtime.modes import eval_mode
from rws.runtime.seed import derived_seed
from rws.runtime.seed import generator as seeded_generator

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


def large_eps_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float | None = None,
    steps: int = 20,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """PGD at a very large ε: ``{"attack", "eps", "steps", "accuracy", "chance", "flag"}``.

    ε defaults to 0.5 for L∞ and ``0.5·sqrt(dim)`` for L2 (the L∞ ball's corner distance);
    ``flag`` is set when the accuracy stays above chance (1 / num_classes).
    """
    if eps is None:
        eps = LARGE_LINF if norm == "linf" else LARGE_LINF * math.sqrt(x[0].numel())
    x_adv = attack(model, x, y, "pgd", eps=eps, steps=steps, norm=norm, generator=generator)
    with eval_mode(model):
        logits = predict(model, x_adv)
    acc = float((logits.argmax(1) == y).float().mean())
    chance = 1.0 / logits.shape[1]
    logger.info("large-eps check: PGD-%d at eps=%g leaves %.2f%% accuracy", steps, eps, 100 * acc)
    return {"attack": "pgd", "eps": eps, "steps": steps, "accuracy": acc, "chance": chance,
            "flag": acc > chance}  # fmt: skip


def _large_eps_warning(r: Mapping[str, Any], norm: str) -> list[str]:
    if not r["flag"]:
        return []
    return [
        f"large eps: PGD-{r['steps']} at eps={r['eps']:g} ({norm}) leaves {r['accuracy']:.2%} "
        f"accuracy, above chance ({r['chance']:.2%}); the attack fails where any image is "
        "reachable (gradient masking?)"
    ]


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
    """Warn when PGD at a very large ε leaves accuracy above chance (see :func:`large_eps_accuracy`)."""
    r = large_eps_accuracy(model, x, y, norm=norm, eps=eps, steps=steps, generator=generator)
    return _large_eps_warning(r, norm)


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


# --- convergence checks (opt-in: rws eval --checks) ---------------------------------------------

MORE_STEPS = 4  # the more-steps check reruns the attack with 4× its steps
STEPS_DROP = 0.02  # a larger accuracy drop with 4× the steps flags an attack that had not converged
RESTART_GAP = 0.02  # a larger change from a second seed (alone or combined) flags unreliable runs
EPS_GRID = (1, 2, 4)  # multiples of ε on which accuracy must not rise
EPS_RISE = 0.01  # rise tolerated as noise on that grid (check_monotone's tol)
_ROUNDING = 1e-9  # a difference exactly at a threshold does not flag


def _robust(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, **kw: Any
) -> torch.Tensor:
    """``(N,)`` bool: right on the clean and on the attacked input."""
    x_adv = attack(model, x, y, method, **kw)
    with eval_mode(model):
        ok = (predict(model, x_adv).argmax(1) == y) & (predict(model, x).argmax(1) == y)
    return ok


def convergence_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str,
    *,
    eps: float,
    steps: int | None = None,
    norm: str = "linf",
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """AutoAttack-style checks that ``method`` converged on ``x`` (``rws eval --checks``).

    * ``more_steps``: the attack with 4× its steps; flags an accuracy drop above 2 points (the
      base run had not converged) or a rise above 1 point.
    * ``eps_grid``: accuracy at ε, 2ε, 4ε with the same seed; flags a rise above 1 point.
    * ``large_eps``: PGD-20 at ε = 0.5 (L∞); flags accuracy above chance.
    * ``restarts``: a second, independently seeded run; flags when the two accuracies differ by
      more than 2 points, or when counting an example robust only if it survives both runs lowers
      the better run's accuracy by more than 2 points.

    Costs about 8 runs of the attack on ``x`` (keep it to a few hundred images).

    Args:
        model: The classifier under evaluation.
        x: Clean images in [0, 1].
        y: Their labels.
        method: A registered attack (single-step ones skip ``more_steps``).
        eps: The evaluation radius.
        steps: The evaluation's steps (the attack's default when None).
        norm: ``"linf"`` or ``"l2"``.
        seed: Root of the two runs' seeds.
        generator: Seed of the large-ε PGD.

    Returns:
        One-line warnings (empty when every check passes) and the measured section: each check's
        numbers, threshold and ``flag``.
    """
    info = ATTACKS.entry(method).info
    k = None if info.get("single_step") else steps or int(info["steps"])

    def run(e: float = eps, n: int | None = k, tag: str = "a") -> torch.Tensor:
        g = seeded_generator(derived_seed(seed, "checks", method, tag))
        return _robust(model, x, y, method, eps=e, steps=n, norm=norm, generator=g)

    acc = lambda ok: int(ok.sum()) / max(ok.numel(), 1)  # noqa: E731  (exact fractions)
    base = run()
    out: dict[str, Any] = {"attack": method, "examples": int(x.shape[0]), "eps": eps, "steps": k}
    warnings: list[str] = []
    if k is None:
        out["more_steps"] = {"skipped": f"{method} is a single-step attack", "flag": False}
    else:
        a0, a1 = acc(base), acc(run(n=MORE_STEPS * k))
        w = check_monotone({k: a0, MORE_STEPS * k: a1}, what="steps")
        if a0 - a1 > STEPS_DROP + _ROUNDING:
            w.append(
                f"more steps: {method} robust accuracy falls from {a0:.2%} ({k} steps) to "
                f"{a1:.2%} ({MORE_STEPS * k} steps), more than {STEPS_DROP:.0%} points: the "
                "attack had not converged; evaluate with more steps"
            )
        out["more_steps"] = {"steps": [k, MORE_STEPS * k], "accuracy": [a0, a1],
                             "drop": a0 - a1, "threshold": STEPS_DROP, "rise_threshold": 0.01,
                             "flag": bool(w)}  # fmt: skip
        warnings += w
    grid = {m * eps: acc(base) if m == 1 else acc(run(e=m * eps)) for m in EPS_GRID}
    w = check_monotone(grid, what="eps", tol=EPS_RISE)
    out["eps_grid"] = {"eps": list(grid), "accuracy": list(grid.values()), "threshold": EPS_RISE,
                       "flag": bool(w)}  # fmt: skip
    large = large_eps_accuracy(model, x, y, norm=norm, generator=generator)
    out["large_eps"] = large
    other = run(tag="b")
    a, b, both = acc(base), acc(other), acc(base & other)
    gap = max(abs(a - b), min(a, b) - both)
    flag = gap > RESTART_GAP + _ROUNDING
    out["restarts"] = {"accuracy": [a, b], "both": both, "gap": gap, "threshold": RESTART_GAP,
                       "flag": flag}  # fmt: skip
    if flag:
        w.append(
            f"restarts: two seeds of {method} leave {a:.2%} and {b:.2%} robust accuracy, "
            f"{both:.2%} when both must fail: more than {RESTART_GAP:.0%} points apart; the "
            "attack depends on its random start (use restarts)"
        )
    warnings += w + _large_eps_warning(large, norm)
    for line in warnings:
        logger.warning("%s", line)
    return warnings, out


def check_cells(section: Mapping[str, Any]) -> dict[str, str]:
    """Table cells of a ``convergence_checks`` section: label → ``"ok …"`` or ``"FLAG …"``."""
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    mark = lambda d: "FLAG" if d.get("flag") else "ok"  # noqa: E731
    cells = {}
    if "more_steps" in section:
        d = section["more_steps"]
        text = d.get("skipped") or " → ".join(map(pct, d["accuracy"]))
        cells[f"check: {MORE_STEPS}× steps"] = f"{mark(d)} {text}"
    if "eps_grid" in section:
        d = section["eps_grid"]
        cells["check: ε, 2ε, 4ε"] = f"{mark(d)} " + ", ".join(map(pct, d["accuracy"]))
    if "large_eps" in section:
        d = section["large_eps"]
        cells["check: large ε"] = f"{mark(d)} {pct(d['accuracy'])} (chance {pct(d['chance'])})"
    if "restarts" in section:
        d = section["restarts"]
        cells["check: 2 seeds"] = f"{mark(d)} {', '.join(map(pct, d['accuracy']))}"
    return cells
