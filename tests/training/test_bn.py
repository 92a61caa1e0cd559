"""BatchNorm recalibration (rws.training.bn): only running statistics move, to the right values."""

from __future__ import annotations

import copy

import pytest
import torch

from rws.data import Split
from rws.errors import UnknownNameError, UsageError
from rws.robustness.corruptions import corrupt
from rws.training import init_model, recalibrate_bn
from tests.training.conftest import accuracy


def test_recalibrate_bn_moves_only_running_stats(clean, digits, noisy_test) -> None:
    model = copy.deepcopy(clean.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = digits.train.x
    recalibrate_bn(model, x, corruption="gaussian_noise", severity=5, batch_size=128)
    after = model.state_dict()
    assert not model.training
    for k, v in after.items():
        if k.endswith(("running_mean", "running_var")):
            assert not torch.equal(v, before[k]), k
        else:  # weights, biases and num_batches_tracked are bit-identical
            assert torch.equal(v, before[k]), k

    # bn1's statistics are now the cumulative average of conv1's per-batch statistics on the same
    # noisy batches (the default generator is seeded with 0)
    g = torch.Generator().manual_seed(0)
    means, variances = [], []
    with torch.no_grad():
        for a in range(0, len(x), 128):
            f = model.conv1(
                model.normalize(corrupt(x[a : a + 128], "gaussian_noise", 5, generator=g))
            )
            means.append(f.mean((0, 2, 3)))  # (B, 16, 32, 32) -> (16,)
            variances.append(f.var((0, 2, 3)))  # unbiased, as BatchNorm keeps it
    mean, var = torch.stack(means).mean(0), torch.stack(variances).mean(0)
    assert torch.allclose(after["bn1.running_mean"], mean, atol=1e-5)
    assert torch.allclose(after["bn1.running_var"], var, rtol=1e-4)
    assert (before["bn1.running_mean"] - mean).abs().max() > 0.02  # the clean stats were far off
    assert (before["bn1.running_var"] / var).min() < 0.8

    gain = accuracy(model, noisy_test, digits.test.y) - accuracy(clean.model, noisy_test,
                                                                 digits.test.y)  # fmt: skip
    assert gain > 0.10, gain


def test_recalibrate_bn_inputs() -> None:
    model = init_model("small-cnn", 10, seed=0)
    x = torch.rand(8, 3, 32, 32)
    with pytest.raises(UsageError, match="give the severity"):
        recalibrate_bn(model, x, corruption="fog")
    with pytest.raises(UsageError, match="a severity needs a corruption"):
        recalibrate_bn(model, x, severity=3)
    with pytest.raises(UnknownNameError, match="unknown corruption 'fgo'"):
        recalibrate_bn(model, x, corruption="fgo", severity=3)
    with pytest.raises(UsageError, match="no images"):
        recalibrate_bn(model, x[:0])
    # clean recalibration with momentum 1.0 keeps exactly the last batch's statistics
    recalibrate_bn(model, Split(x, torch.zeros(8, dtype=torch.long)), momentum=1.0, batch_size=8)
    with torch.no_grad():
        f = model.conv1(model.normalize(x))
    assert torch.allclose(model.bn1.running_mean, f.mean((0, 2, 3)), atol=1e-6)
    assert model.bn1.momentum == 0.1 and int(model.bn1.num_batches_tracked) == 0


def test_recalibrate_bn_mix_is_alpha_weighted_old_and_new() -> None:
    model = init_model("small-cnn", 10, seed=0)
    x = torch.rand(16, 3, 32, 32)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    new_model = recalibrate_bn(copy.deepcopy(model), x, batch_size=8)
    new = new_model.state_dict()
    recalibrate_bn(model, x, batch_size=8, mix=0.3)
    for k, v in model.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            assert torch.allclose(v, 0.7 * old[k] + 0.3 * new[k], atol=1e-6), k
            assert not torch.allclose(v, new[k], atol=1e-4), k
        else:
            assert torch.equal(v, old[k]), k
    same = recalibrate_bn(copy.deepcopy(new_model), x, batch_size=8, mix=1.0).state_dict()
    assert all(torch.equal(same[k], new[k]) for k in new)
    with pytest.raises(UsageError, match=r"mix must be in \[0, 1\]"):
        recalibrate_bn(model, x, mix=1.5)
