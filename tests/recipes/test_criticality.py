"""rws.recipes.criticality: module robust criticality against the reference's way, computed independently."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rws
from rws.data import ImageDataset
from rws.errors import UsageError
from rws.recipes.criticality import MrcSettings, layers_of, mrc
from rws.runtime.seed import derived_seed
from tests.recipes.conftest import EPS


def naive_mrc(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: MrcSettings, shuffle_seed: int = -1
) -> dict[str, float]:
    """The reference's way, written independently: a deep copy per module, every parameter
    tracked by autograd, an SGD optimizer stepping on the negated loss; with ``shuffle_seed`` ≥ 0
    the ascent batches follow a new permutation each pass (the same sequence for every module)."""
    out = {}
    with torch.no_grad():
        l0 = float(sum(F.cross_entropy(model(x[a : a + s.batch_size]), y[a : a + s.batch_size],
                                       reduction="sum").double()
                       for a in range(0, len(y), s.batch_size))) / len(y)  # fmt: skip
    for name, _ in layers_of(model):
        m = copy.deepcopy(model).eval()
        w = dict(m.named_parameters())[f"{name}.weight"]
        w0 = w.detach().clone()
        opt = torch.optim.SGD([w], lr=s.lr)
        best = l0
        g = torch.Generator().manual_seed(max(shuffle_seed, 0))
        for _ in range(s.passes):
            perm = (
                torch.randperm(len(y), generator=g) if shuffle_seed >= 0 else torch.arange(len(y))
            )
            for a in range(0, len(y), s.batch_size):
                b = perm[a : a + s.batch_size]
                opt.zero_grad()
                (-F.cross_entropy(m(x[b]), y[b])).backward()
                opt.step()
            with torch.no_grad():
                d = w - w0
                r = s.eps_ratio * float(w0.double().norm())
                if float(d.double().norm()) > r:
                    w.copy_(w0 + d * (r / float(d.double().norm())))
                loss = float(sum(F.cross_entropy(m(x[a : a + s.batch_size]), y[a : a + s.batch_size],
                                                 reduction="sum").double()
                                 for a in range(0, len(y), s.batch_size))) / len(y)  # fmt: skip
            best = max(best, loss)
        out[name] = best - l0
    return out


def test_mrc_equals_the_reference_way_and_restores_weights(at: tuple, digits: ImageDataset) -> None:
    model, _ = at
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = MrcSettings(passes=3, attack_steps=3, n_examples=160, batch_size=64)
    res = mrc(model, digits, settings=s, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.module for m in res.modules] == ["conv1", "conv2", "conv3", "fc"]
    assert res.modules[1].tensors == ("conv2.weight", "bn2.weight", "bn2.bias",
                                      "bn2.running_mean", "bn2.running_var")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x, y = digits.train.x[:160], digits.train.y[:160]
    xa = rws.attack(model, x, y, "pgd", eps=EPS, steps=3, generator=g, batch_size=64)
    ref = naive_mrc(model, xa, y, s)
    for m in res.modules:
        assert m.mrc == pytest.approx(ref[m.module], rel=1e-5, abs=1e-6), m.module
        assert m.mrc >= 0 and 0 <= m.robust_acc <= res.base_robust_acc + 1e-9
    assert res.least_critical.mrc == min(ref.values())
    assert max(m.mrc for m in res.modules) > 5 * res.least_critical.mrc  # modules differ a lot
    with pytest.raises(UsageError, match="no conv/linear module 'conv9'"):
        mrc(model, digits, modules=["conv9"], settings=s)


def test_reference_settings_use_the_test_split_and_shuffled_batches(
    at: tuple, digits: ImageDataset
) -> None:
    model, _ = at
    s = MrcSettings(passes=2, attack_steps=3, n_examples=160, batch_size=64, split="test",
                    shuffle=True, attack_step_size=2 / 225)  # fmt: skip
    res = mrc(model, digits, settings=s, device="cpu")
    g = torch.Generator().manual_seed(0)
    x, y = digits.test.x[:160], digits.test.y[:160]
    xa = rws.attack(model, x, y, "pgd", eps=EPS, steps=3, step_size=2 / 225, generator=g,
                    batch_size=64)  # fmt: skip
    ref = naive_mrc(model, xa, y, s, shuffle_seed=derived_seed(0, "mrc-order"))
    for m in res.modules:
        assert m.mrc == pytest.approx(ref[m.module], rel=1e-5, abs=1e-6), m.module
    fixed = mrc(model, digits, settings=MrcSettings(passes=2, attack_steps=3, n_examples=160,
                                                   batch_size=64), device="cpu")  # fmt: skip
    assert [m.mrc for m in fixed.modules] != [m.mrc for m in res.modules]
    with pytest.raises(UsageError, match="split must be 'train' or 'test'"):
        MrcSettings(split="val")  # type: ignore[arg-type]
