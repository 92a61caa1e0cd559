"""Adversarial attacks: budgets, strength ordering, worst-case ensemble, determinism, masking flags."""

from __future__ import annotations

import doctest
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rws.data import load_digits
from rws.errors import UnknownNameError, UsageError
from rws.models import create_model
from rws.robustness import attacks as attacks_pkg
from rws.robustness.attacks import (
    ATTACKS,
    apgd,
    api,
    attack,
    check_gradient_masking,
    get_attack,
    list_attacks,
    losses,
    parse_eps,
    pma,
    registry,
)
from rws.robustness.attacks.checks import check_monotone

EPS2 = 2 / 255  # the trained digits CNN keeps a useful fraction of its accuracy at this radius
L2_EPS = 0.25


def _train_digits_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)  # model init only; the data split is fixed by load_digits
    data = load_digits()
    model = create_model("small-cnn")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(8):
        model.train()
        perm = torch.randperm(len(data.train), generator=order)
        for i in range(0, len(perm), 32):
            b = perm[i : i + 32]
            loss = F.cross_entropy(model(data.train.x[b]), data.train.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, data.test.x[:128], data.test.y[:128]


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return _train_digits_cnn()


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y  # (N,) correct mask


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_trained_model_is_accurate(trained):
    model, x, y = trained
    assert _acc(model, x, y).float().mean() >= 0.85


def test_registry_lists_every_family():
    assert set(list_attacks()) >= {"fgsm", "pgd", "apgd", "apgd-dlr", "apgd-t", "pma"}
    assert list_attacks("apgd*") == ["apgd", "apgd-dlr", "apgd-t"]
    for entry in ATTACKS:
        assert entry.summary and entry.url.startswith("https://")
        assert entry.info["steps"] >= 1
        assert get_attack(entry.name) is entry.obj and callable(entry.obj)  # the function
    assert get_attack("pgd").__name__ == "pgd"
    with pytest.raises(UnknownNameError, match="unknown attack 'pgdd'; choose one of: "):
        get_attack("pgdd")


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method", list_attacks())
def test_every_attack_stays_in_ball_and_box(trained, method, norm):
    model, x, y = trained
    x, y = x[:32], y[:32]
    eps = 8 / 255 if norm == "linf" else 1.0
    steps = None if method == "fgsm" else 3
    x_adv = attack(model, x, y, method, eps=eps, norm=norm, steps=steps, generator=_gen())
    assert x_adv.shape == x.shape and x_adv.dtype == torch.float32
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    radius = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(radius.max()) <= eps * (1 + 1e-5)
    assert float(radius.max()) > 0.5 * eps  # it actually moved
    assert _acc(model, x_adv, y).sum() < _acc(model, x, y).sum()


@pytest.mark.parametrize(
    ("norm", "grid"), [("linf", [0.5, 1, 2, 4, 8]), ("l2", [0.1, 0.2, 0.4, 0.8])]
)
def test_robust_accuracy_falls_with_eps(trained, norm, grid):
    model, x, y = trained
    clean = int(_acc(model, x, y).sum())
    scale = 1 / 255 if norm == "linf" else 1.0
    accs = [clean]
    for e in grid:
        x_adv = attack(model, x, y, "pgd", eps=e * scale, norm=norm, generator=_gen())
        accs.append(int(_acc(model, x_adv, y).sum()))
    assert accs[1] < accs[0]
    assert all(b <= a for a, b in pairwise(accs)), accs
    assert accs[-1] <= 0.2 * len(y), accs


def test_more_pgd_steps_are_no_weaker(trained):
    model, x, y = trained
    few = attack(model, x, y, "pgd", eps=EPS2, steps=3, generator=_gen())
    many = attack(model, x, y, "pgd", eps=EPS2, steps=20, generator=_gen())
    assert int(_acc(model, many, y).sum()) <= int(_acc(model, few, y).sum()) + 1
    # restarts keep the worst case: the first restart is the single run, later ones only add
    once = _acc(model, attack(model, x, y, "pgd", eps=EPS2, steps=3, generator=_gen()), y)
    thrice = _acc(
        model, attack(model, x, y, "pgd", eps=EPS2, steps=3, restarts=3, generator=_gen()), y
    )
    assert int((thrice & ~once).sum()) == 0 and int(thrice.sum()) <= int(once.sum())


@pytest.mark.parametrize(("norm", "eps"), [("linf", EPS2), ("l2", L2_EPS)])
def test_apgd_ce_at_least_as_strong_as_pgd(trained, norm, eps):
    model, x, y = trained
    pgd_acc = _acc(model, attack(model, x, y, "pgd", eps=eps, norm=norm, steps=20), y).sum()
    apgd_acc = _acc(model, attack(model, x, y, "apgd", eps=eps, norm=norm, steps=20), y).sum()
    assert int(apgd_acc) <= int(pgd_acc) + 2  # ≈1.5 % tolerance
    assert int(apgd_acc) < int(_acc(model, x, y).sum())


def test_autoattack_lite_is_the_worst_case_per_example(trained):
    model, x, y = trained
    x, y = x[:64], y[:64]
    kw = dict(eps=EPS2, steps=8)
    ens = _acc(model, attack(model, x, y, "autoattack-lite", generator=_gen(3), **kw), y)
    for member in ("apgd", "apgd-t", "pma"):
        alone = _acc(model, attack(model, x, y, member, generator=_gen(3), **kw), y)
        # an example the member fools alone is fooled by the ensemble (same seed per member)
        assert int((ens & ~alone).sum()) == 0, member
        assert int(ens.sum()) <= int(alone.sum())
    assert int(ens.sum()) < int(_acc(model, x, y).sum())


@pytest.mark.parametrize("method", ["pgd", "apgd", "pma"])
def test_seeded_attacks_are_deterministic(trained, method):
    model, x, y = trained
    x, y = x[:32], y[:32]
    a = attack(model, x, y, method, eps=EPS2, steps=5, generator=_gen(7))
    with torch.no_grad():  # a caller's no_grad context must not break the attack
        b = attack(model, x, y, method, eps=EPS2, steps=5, generator=_gen(7))
    c = attack(model, x, y, method, eps=EPS2, steps=5, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_chunking_a_deterministic_attack_changes_nothing(trained):
    model, x, y = trained
    whole = attack(model, x, y, "fgsm", eps=EPS2)
    assert torch.equal(whole, attack(model, x, y, "fgsm", eps=EPS2, batch_size=24))
    assert attack(model, x[:0], y[:0], "pgd").shape == (0, 3, 32, 32)


def test_model_mode_is_restored_and_bn_stats_untouched(trained):
    model, x, y = trained
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.bn2.eval()  # mixed modes come back as they were
    try:
        attack(model, x[:16], y[:16], "apgd", eps=EPS2, steps=3)
        assert model.training and model.bn1.training and not model.bn2.training
    finally:
        model.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, stats[k]), k


def test_pma_loss_gradient_decomposes_into_two_cross_entropies(trained):
    model, x, y = trained
    x = x[:16].clone().requires_grad_(True)
    y = y[:16]
    logits = model(x)
    (g_pm,) = torch.autograd.grad(losses.probability_margin(logits, y).sum(), x)
    p = logits.detach().softmax(1)
    runner_up = p.scatter(1, y[:, None], -1.0).argmax(1)
    p_y = p.gather(1, y[:, None]).view(-1, 1, 1, 1)
    p_max = p.gather(1, runner_up[:, None]).view(-1, 1, 1, 1)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    (g_tgt,) = torch.autograd.grad(-F.cross_entropy(model(x), runner_up, reduction="sum"), x)
    expected = p_y * g_ce + p_max * g_tgt
    torch.testing.assert_close(g_pm, expected, rtol=1e-4, atol=1e-7)


def test_pma_schedule_restarts_cosine_after_half():  # pinned against the reference: test_pma.py
    sizes = pma.step_schedule(10, 2.0)
    assert sizes[1] == sizes[6] == pytest.approx(2.0)
    assert all(a > b for a, b in pairwise(sizes[1:6]))
    assert pma.phase_loss(0, 0, 10) is pma.phase_loss(1, 0, 10) is pma.true_probability
    assert pma.phase_loss(0, 4, 10) is losses.neg_true_probability
    assert pma.phase_loss(1, 4, 10) is losses.max_other_probability
    assert pma.phase_loss(1, 5, 10) is losses.probability_margin
    assert apgd.checkpoint_windows(100) == (22, 6, 3)


class _Softmax(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).softmax(1)


class _Rounded(_Softmax):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # a non-differentiable quantisation step
        return self.inner(torch.round(x * 4) / 4)


class _Noisy(_Softmax):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + 0.05 * torch.randn_like(x))


def test_masking_checks_are_silent_on_the_normal_model(trained):
    model, x, y = trained
    steps = {5: 0.40, 10: 0.35, 20: 0.35}
    assert check_gradient_masking(model, x[:64], y[:64], steps_results=steps) == []


@pytest.mark.parametrize(
    ("wrapper", "flag"),
    [(_Softmax, "softmax outputs"), (_Rounded, "zero input gradients"), (_Noisy, "randomness")],
)
def test_masking_checks_fire_on_masked_models(trained, wrapper, flag):
    model, x, y = trained
    flags = check_gradient_masking(wrapper(model), x[:64], y[:64], large_eps=False)
    assert any(f.startswith(flag) for f in flags), flags


def test_monotonicity_flags_use_measured_results(trained):
    model, x, y = trained
    (flag,) = check_monotone({5: 0.30, 20: 0.45}, what="steps")
    assert flag.startswith("robust accuracy rises with more steps: 30.00% at steps=5 -> 45.00%")
    assert check_monotone({1 / 255: 0.5, 2 / 255: 0.5, 4 / 255: 0.1}, what="eps") == []
    flags = check_gradient_masking(model, x[:8], y[:8], eps_results={0.1: 0.2, 0.2: 0.3})
    assert any("more eps" in f for f in flags)


def test_parse_eps():
    assert parse_eps("8/255") == 8 / 255
    assert parse_eps(" 8 / 255 ") == 8 / 255
    assert parse_eps("0.5") == 0.5
    assert parse_eps(1) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": 0}, "eps must be a positive finite number, got 0"),
        ({"eps": "-8/255"}, "eps must be a positive finite number, got '-8/255'"),
        ({"eps": "8/0"}, "cannot parse eps '8/0'; use a number such as 0.03 or a fraction"),
        ({"eps": "big"}, "cannot parse eps 'big'"),
        ({"eps": None}, "eps must be a number or a string such as '8/255', got None"),
        ({"norm": "l1"}, "unknown norm 'l1'; choose one of: linf, l2"),
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"restarts": 1.5}, "restarts must be a positive integer, got 1.5"),
        ({"batch_size": -1}, "batch_size must be a positive integer, got -1"),
        ({"step_size": 0.0}, "step_size must be a positive finite number, got 0.0"),
        ({"method": "fgsm", "steps": 5}, "fgsm is a single-step attack"),
        ({"generator": 3}, "generator must be a torch.Generator, got int"),
    ],
)
def test_bad_options_raise_usage_error(trained, kwargs, message):
    model, x, y = trained
    kwargs = {"method": "pgd", **kwargs}
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        attack(model, x[:4], y[:4], **kwargs)


def test_bad_tensors_raise_usage_error(trained):
    model, x, y = trained
    x, y = x[:4], y[:4]
    cases = [
        (x * 255, y, "x must be in [0, 1] (normalise inside the model), got values in [0, 255]"),
        (x.flatten(), y, "x must be a floating-point tensor of shape (N, ...)"),
        (x.clone().fill_(float("nan")), y, "x contains NaN or Inf values"),
        (x, y[:3], "y must be a 1-D tensor of 4 labels matching x, got shape [3]"),
        (x, y.float(), "y must hold integer class labels, got dtype torch.float32"),
        (x, y + 10, "labels must be in [0, 9], got ["),
    ]
    for xx, yy, message in cases:
        with pytest.raises(UsageError) as err:
            attack(model, xx, yy)
        assert str(err.value).startswith(message), str(err.value)
    with pytest.raises(UnknownNameError, match=r"^unknown attack 'cw'; choose one of: apgd, "):
        attack(model, x, y, "cw")
    three = create_model("small-cnn", num_classes=3)
    with pytest.raises(UsageError, match=r"^apgd-t needs at least 4 classes, the model has 3$"):
        attack(three, x, y % 3, "apgd-t")


def test_docstring_examples_run():
    for module in (api, registry, attacks_pkg.checks):
        assert doctest.testmod(module, raise_on_error=False).failed == 0, module.__name__
