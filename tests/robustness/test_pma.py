"""PMA against its reference (xieyong0/PMA ``attacks/MD.py``): step sizes and loss of every step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rws.robustness.attacks import attack, losses, pma


def reference_alpha(i: int, steps: int, eps: float) -> float:
    """The reference's step size of step ``i``, transcribed from ``MDAttack.perturb``."""
    change_point = steps / 2
    initial, period = 2.0 * eps, steps - change_point
    if i > change_point:
        return initial * 0.5 * (1 + math.cos((i - change_point - 1) / period * math.pi))
    return initial * 0.5 * (1 + math.cos((i - 1) / period * math.pi))


def reference_loss(r: int, i: int, steps: int) -> str:
    """The reference's loss of step ``i`` in round ``r`` (``z`` = softmax probabilities for PMA)."""
    if i < 1:
        return "z_y"
    if i < steps / 2:
        return "z_max" if r else "-z_y"
    return "z_max - z_y"


LOSS_NAMES = {
    pma.true_probability: "z_y",
    losses.neg_true_probability: "-z_y",
    losses.max_other_probability: "z_max",
    losses.probability_margin: "z_max - z_y",
}


def test_step_schedule_is_the_references_exact_values() -> None:
    # K = 4: change point 2, period 2 -> ½(1+cos(-π/2)), ½(1+cos 0), ½(1+cos(π/2)), ½(1+cos 0)
    assert pma.step_schedule(4, 1.0) == pytest.approx([0.5, 1.0, 0.5, 1.0], abs=1e-12)
    # K = 6: period 3 -> cos(-π/3), cos 0, cos(π/3), cos(2π/3), restart at step 4, cos(π/3)
    assert pma.step_schedule(6, 1.0) == pytest.approx([0.75, 1.0, 0.75, 0.25, 1.0, 0.75])
    for steps in (1, 2, 5, 7, 10, 100):
        expected = [reference_alpha(i, steps, 4 / 255) for i in range(steps)]
        assert pma.step_schedule(steps, 8 / 255) == pytest.approx(expected, rel=1e-12), steps
    sizes = pma.step_schedule(100, 1.0)
    assert sizes[1] == sizes[51] == 1.0  # the cosine peaks at step 1 and restarts at K/2 + 1
    assert sizes[50] < 0.001 and sizes[0] < 1.0 and sizes[0] == pytest.approx(sizes[2])


@pytest.mark.parametrize("steps", [1, 2, 5, 6, 100])
def test_loss_of_every_step_is_the_references(steps: int) -> None:
    for r in range(pma.ROUNDS):
        got = [LOSS_NAMES[pma.phase_loss(r, i, steps)] for i in range(steps)]
        assert got == [reference_loss(r, i, steps) for i in range(steps)], (r, got)


class _Constant(nn.Module):
    """Predicts class 0 everywhere (no example is ever fooled); its input gradient is zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.tensor([3.0, 0.0, -1.0], device=x.device)
        return logits + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_trajectory_uses_the_schedule_and_losses_in_both_rounds(monkeypatch) -> None:
    """Step ``i`` moves by exactly ``sizes[i]`` (with a unit direction) under loss ``i``."""
    taken, used, out = [], [], []
    real_project, real_loss_grad = pma.project, pma.loss_grad

    def spy_project(x_adv, x, eps, norm):
        taken.append(x_adv)
        out.append(real_project(x_adv, x, eps, norm))
        return out[-1]

    def spy_loss_grad(model, x, y, loss_fn):
        used.append(LOSS_NAMES[loss_fn])
        return real_loss_grad(model, x, y, loss_fn)

    monkeypatch.setattr(pma, "project", spy_project)
    monkeypatch.setattr(pma, "loss_grad", spy_loss_grad)
    monkeypatch.setattr(pma, "direction", lambda g, norm: torch.ones_like(g))
    steps, eps = 6, 0.01
    x, y = torch.full((2, 1, 2, 2), 0.5), torch.zeros(2, dtype=torch.long)
    pma.pma(_Constant(), x, y, eps=eps, norm="linf", steps=steps, generator=torch.Generator())
    # each round: one projection of the random start, then one per step
    assert len(taken) == pma.ROUNDS * (steps + 1)
    for r in range(pma.ROUNDS):
        base = r * (steps + 1)
        moved = [float((taken[base + i + 1] - out[base + i]).mean()) for i in range(steps)]
        assert moved == pytest.approx([reference_alpha(i, steps, eps) for i in range(steps)])
        assert used[r * steps : (r + 1) * steps] == [reference_loss(r, i, steps) for i in range(6)]


def test_first_step_raises_the_true_class_probability() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    x = torch.rand(64, 3, 2, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    pma.pma(model, x, y, eps=1 / 255, norm="linf", steps=100, generator=torch.Generator())
    start, after = seen[1], seen[2]  # seen[0] is the clean prediction
    n = after.shape[0]
    assert n == x.shape[0]  # nothing fooled at the random start with this tiny ε
    p = lambda z: model(z).softmax(1).gather(1, y[:n, None]).squeeze(1)  # noqa: E731
    with torch.no_grad():
        assert bool((p(after) > p(start)).all())
    # the step goes (≈2ε) towards sign ∇p_y: almost every pixel ends at the ε-ball's vertex
    start.requires_grad_(True)
    (grad,) = torch.autograd.grad(pma.true_probability(model(start), y).sum(), start)
    vertex = (x + grad.sign() / 255).clamp(0, 1)
    assert float((after - vertex).abs().le(1e-6).float().mean()) > 0.99


def test_pma_still_attacks(photos32) -> None:
    from rws.models import create_model

    torch.manual_seed(0)
    model = create_model("small-cnn").eval()
    x = photos32
    with torch.no_grad():
        y = model(x).argmax(1)
    x_adv = attack(model, x, y, "pma", eps=8 / 255, steps=10)
    with torch.no_grad():
        assert int((model(x_adv).argmax(1) == y).sum()) < x.shape[0]
