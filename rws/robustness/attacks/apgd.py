"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"), on CE, DLR and targeted DLR, L∞ and L2.

The schedule follows the paper: step size 2ε, momentum 0.75, checkpoints after 22 % of the budget,
then windows shrinking by 3 % down to 6 %. At each checkpoint the step size of an example is halved,
and it restarts from its best point, when fewer than ρ = 75 % of the window's steps raised its loss,
or when the step was not halved at the previous checkpoint and the best loss has not improved since.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
from torch import nn

from rws.robustness.attacks._core import (
    correct_mask,
    direction,
    loss_grad,
    predict,
    project,
    random_noise,
)
from rws.robustness.attacks.losses import ce_loss, dlr_loss, dlr_targeted_loss
from rws.robustness.attacks.registry import register_attack

ApgdLoss = Literal["ce", "dlr", "dlr-targeted"]
DEFAULT_STEPS = 100
MOMENTUM = 0.75
RHO = 0.75
N_TARGETS = 9

_TargetLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_LOSSES: dict[str, _TargetLoss] = {
    "ce": lambda z, y, t: ce_loss(z, y),
    "dlr": lambda z, y, t: dlr_loss(z, y),
    "dlr-targeted": dlr_targeted_loss,
}


def checkpoint_windows(steps: int) -> tuple[int, int, int]:
    """First window length, minimum length and decrement: ``0.22, 0.06, 0.03`` of the budget."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def _run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    x_start: torch.Tensor,
    *,
    loss: _TargetLoss,
    eps: float,
    norm: str,
    steps: int,
    step0: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run; returns (points, fooled, best loss). Fooled examples stop at their first
    misclassified iterate and leave the batch; the others return their highest-loss point."""
    n = x.shape[0]
    out = x_start.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    best_out = torch.full((n,), float("-inf"), device=x.device)
    pos = torch.arange(n, device=x.device)  # running example -> row of the inputs

    def evaluate(xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lo, logits, g = loss_grad(model, xa, y[pos], lambda z, yy: loss(z, yy, target[pos]))
        return lo, g, logits.argmax(1) != y[pos]

    xa = x_start
    lo, grad, hit = evaluate(xa)
    s = {  # per running example state, (n_running, ...) each
        "xa": xa,
        "x_prev": xa,
        "grad": grad,
        "x_best": xa,
        "grad_best": grad,
        "loss_best": lo,
        "loss_prev": lo,
        "n_up": torch.zeros_like(lo),
        "step": torch.full_like(lo, step0),
        "loss_best_ckpt": lo,
        "reduced_ckpt": torch.ones_like(lo, dtype=torch.bool),
    }
    k, k_min, k_decr = checkpoint_windows(steps)
    counter = 0
    for i in range(steps + 1):
        # examples misclassified at the point just evaluated are done: keep it and drop them
        out[pos[hit]] = xa[hit]
        fooled[pos[hit]] = True
        if hit.any():
            s = {key: v[~hit] for key, v in s.items()}
            pos = pos[~hit]
        if pos.numel() == 0 or i == steps:
            break
        xs, xa, x_prev = x[pos], s["xa"], s["x_prev"]
        step = s["step"].view(-1, *([1] * (x.dim() - 1)))
        a = MOMENTUM if i > 0 else 1.0
        z = project(xa + step * direction(s["grad"], norm), xs, eps, norm)
        x_new = project(xa + a * (z - xa) + (1.0 - a) * (xa - x_prev), xs, eps, norm)
        lo, grad, hit = evaluate(x_new)
        s["x_prev"], s["xa"], s["grad"] = xa, x_new, grad

        up = lo > s["loss_best"]
        s["x_best"] = torch.where(up.view_as(step), x_new, s["x_best"])
        s["grad_best"] = torch.where(up.view_as(step), grad, s["grad_best"])
        s["loss_best"] = torch.where(up, lo, s["loss_best"])
        s["n_up"] = s["n_up"] + (lo > s["loss_prev"]).float()
        s["loss_prev"] = lo

        counter += 1
        if counter == k:
            oscillating = s["n_up"] <= k * RHO
            stalled = ~s["reduced_ckpt"] & (s["loss_best_ckpt"] >= s["loss_best"])
            reduce = oscillating | stalled
            s["reduced_ckpt"], s["loss_best_ckpt"] = reduce, s["loss_best"].clone()
            s["n_up"] = torch.zeros_like(lo)
            s["step"] = torch.where(reduce, s["step"] / 2.0, s["step"])
            r = reduce.view_as(step)
            s["xa"] = torch.where(r, s["x_best"], s["xa"])
            s["grad"] = torch.where(r, s["grad_best"], s["grad"])
            counter, k = 0, max(k - k_decr, k_min)
        xa = x_new
    out[pos] = s["x_best"]
    best_out[pos] = s["loss_best"]
    return out, fooled, best_out


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: ApgdLoss = "ce",
    eps: float,
    norm: str,
    steps: int | None = None,
    step_size: float | None = None,
    restarts: int = 1,
    generator: torch.Generator,
    active: torch.Tensor | None = None,
    n_targets: int = N_TARGETS,
) -> torch.Tensor:
    """APGD on ``loss``; only correctly classified (and ``active``) examples are attacked.

    Args:
        model: Classifier in eval mode returning logits.
        x: Clean images ``(N, ...)`` in [0, 1], fp32.
        y: Labels ``(N,)``.
        loss: ``"ce"``, ``"dlr"`` or ``"dlr-targeted"`` (targets: the ``n_targets`` highest-scoring
            other classes on the clean input, one run each, as AutoAttack's APGD-T).
        eps: Radius of the ball.
        norm: ``"linf"`` or ``"l2"``.
        steps: Iterations per run (default 100).
        step_size: Initial step (default 2ε).
        restarts: Random restarts per run, each on the examples not yet fooled.
        generator: Source of the random starts.
        active: Optional ``(N,)`` mask of the examples to attack.
        n_targets: Target classes for ``"dlr-targeted"`` (capped at ``C - 1``).

    Returns:
        ``x_adv``: a misclassified iterate where one was found, else the highest-loss point;
        ``x`` itself for examples not attacked.
    """
    steps = DEFAULT_STEPS if steps is None else steps
    step0 = 2.0 * eps if step_size is None else step_size
    todo = correct_mask(model, x, y, active)
    x_out = x.clone()
    best = torch.full((x.shape[0],), float("-inf"), device=x.device)
    if loss == "dlr-targeted":
        ranked = predict(model, x).argsort(dim=1, descending=True)  # (N, C), rank 0 = top class
        n_t = min(n_targets, ranked.shape[1] - 1)
        targets = [ranked[:, r] for r in range(1, n_t + 1)]
    else:
        targets = [y]
    for target in targets:
        for _ in range(restarts):
            noise = random_noise(x.shape, eps, norm, generator, x.device)  # full batch: see _core
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                return x_out
            xs, ys = x[idx], y[idx]
            start = project(xs + noise[idx], xs, eps, norm)
            pts, hit, lo = _run(
                model,
                xs,
                ys,
                target[idx],
                start,
                loss=_LOSSES[loss],
                eps=eps,
                norm=norm,
                steps=steps,
                step0=step0,
            )
            better = hit | (lo > best[idx])
            x_out[idx[better]] = pts[better]
            best[idx[better]] = lo[better]
            todo[idx[hit]] = False
    return x_out


_URL = "https://arxiv.org/abs/2003.01690"
register_attack(
    "apgd",
    summary="APGD-CE: step-size-free PGD with momentum on cross-entropy (AutoAttack)",
    url=_URL,
    steps=DEFAULT_STEPS,
)(partial(apgd, loss="ce"))
register_attack(
    "apgd-dlr",
    summary="APGD-DLR: APGD on the scale-invariant Difference of Logits Ratio loss",
    url=_URL,
    steps=DEFAULT_STEPS,
    min_classes=3,
)(partial(apgd, loss="dlr"))
register_attack(
    "apgd-t",
    summary=f"APGD-T: APGD on targeted DLR, one run per top-{N_TARGETS} target class",
    url=_URL,
    steps=DEFAULT_STEPS,
    min_classes=4,
)(partial(apgd, loss="dlr-targeted"))
