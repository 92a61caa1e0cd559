"""Freezing for module fine-tuning (rws.training.freeze) and the validation accuracy helpers."""

from __future__ import annotations

import math

import pytest
import torch

from rws.errors import UsageError
from rws.training import TrainConfig, accuracy, grad_only, init_model
from rws.training.freeze import frozen_except, train_mode
from rws.training.metrics import robust_accuracy


def test_grad_only_and_frozen_except_restore_the_flags() -> None:
    model = init_model("small-cnn", 10, seed=0)
    model.conv1.weight.requires_grad_(False)  # a flag of the caller's, given back as it was
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with grad_only(model, lambda name, _: name.startswith("fc.")):
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight",
                                                                             "fc.bias"}  # fmt: skip
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with pytest.raises(RuntimeError), frozen_except(model, ["conv2"]):
        assert all(p.requires_grad == n.startswith("conv2.") for n, p in model.named_parameters())
        raise RuntimeError
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_frozen_except_refuses_unknown_or_empty_modules() -> None:
    model = init_model("small-cnn", 10, seed=0)
    unknown = r"trainable module\(s\) 'conv9' not in the model; it has e.g. normalize, conv1, bn1"
    with pytest.raises(UsageError, match=unknown), frozen_except(model, ["conv9"]):
        pass
    empty = r"trainable module\(s\) normalize have no parameters"
    with pytest.raises(UsageError, match=empty), frozen_except(model, ["normalize"]):
        pass


def test_train_mode_only_for_the_trainable_modules() -> None:
    model = init_model("small-cnn", 10, seed=0)
    train_mode(model, ["bn1"])
    assert model.bn1.training and not model.training and not model.bn2.training
    train_mode(model, [])
    assert all(m.training for m in model.modules())


def test_parameter_names_train_one_tensor_and_others_mode() -> None:
    model = init_model("small-cnn", 10, seed=0)
    with frozen_except(model, ["conv2.weight"]):
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["conv2.weight"]
    train_mode(model, ["conv2.weight"])
    assert model.conv2.training and not model.bn2.training and not model.training
    train_mode(model, ["conv2.weight"], others="train")  # the RiFT reference: all in train mode
    assert all(m.training for m in model.modules())
    with (
        pytest.raises(UsageError, match=r"'conv2\.gamma' not in the model"),
        frozen_except(model, ["conv2.gamma"]),
    ):
        pass


def test_accuracy_helpers() -> None:
    model = init_model("small-cnn", 10, seed=0)
    x, y = torch.rand(10, 3, 32, 32), torch.arange(10)
    cpu = torch.device("cpu")
    with torch.no_grad():
        expected = int((model.eval()(x).argmax(1) == y).sum()) / 10
    assert accuracy(model, x, y, 3, cpu) == expected  # batches of 3, exact counts
    assert math.isnan(accuracy(model, x[:0], y[:0], 3, cpu))
    cfg = TrainConfig(attack="pgd", attack_steps=2, seed=1)
    robust = robust_accuracy(model, x, y, cfg, 4, cpu)
    assert robust <= expected and robust == robust_accuracy(model, x, y, cfg, 4, cpu)  # seeded
