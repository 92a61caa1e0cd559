"""Evaluation settings (rws.robustness.config.EvalConfig): normalisation, validation messages, JSON
round trip, the report's copy, and evaluate() taking a config or the same keywords."""

from __future__ import annotations

import doctest
import json
import re

import pytest
import torch

import rws.robustness.config as config_mod
from rws.errors import UnknownNameError, UsageError
from rws.models import create_model
from rws.robustness.config import EvalConfig
from rws.robustness.corruptions import CORRUPTIONS
from rws.robustness.evaluate import evaluate
from rws.robustness.report import Report


def test_defaults_and_normalisation() -> None:
    cfg = EvalConfig()
    assert cfg.corruptions == CORRUPTIONS and cfg.severities == (1, 2, 3, 4, 5)
    assert cfg.attack == () and cfg.eps == 8 / 255 and cfg.batch_size == 256
    cfg = EvalConfig(corruptions="fog", severities=3, attack="pgd", eps="4/255")
    assert cfg.corruptions == ("fog",) and cfg.severities == (3,) and cfg.attack == ("pgd",)
    assert cfg.eps == 4 / 255
    assert EvalConfig(corruptions=None, attack="none").corruptions == ()
    assert EvalConfig(corruptions="all").corruptions == CORRUPTIONS
    assert EvalConfig(severities=[5, 1, 5]).severities == (5, 1)  # duplicates dropped, in order
    assert EvalConfig(corruption_source=__import__("pathlib").Path("/x")).corruption_source == "/x"
    with pytest.raises(AttributeError):
        cfg.seed = 1  # type: ignore[misc]  (frozen)


def test_round_trip_keeps_unknown_keys() -> None:
    cfg = EvalConfig(corruptions=["fog", "snow"], severities=(1, 5), attack=["pgd", "fgsm"],
                     steps=3, n_examples=100, seed=2, amp=True, strict=True)  # fmt: skip
    d = cfg.to_dict()
    assert d["corruptions"] == ["fog", "snow"] and d["attack"] == ["pgd", "fgsm"]
    assert json.loads(json.dumps(d)) == d
    assert EvalConfig.from_dict(d) == cfg
    back = EvalConfig.from_dict({**d, "future_option": [1]})
    assert back == cfg and back.extra == {"future_option": [1]}
    assert back.to_dict() == {**d, "future_option": [1]}
    result = doctest.testmod(config_mod, verbose=False)
    assert result.attempted >= 3 and result.failed == 0


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"corruptions": ["fogg"]}, UnknownNameError, "unknown corruption 'fogg'; choose one of: "),
        ({"severities": (0,)}, UsageError, "severity must be an integer from 1 to 5, got 0"),
        ({"severities": (2.0,)}, UsageError, "severity must be an integer from 1 to 5, got 2.0"),
        ({"attack": "pgdd"}, UnknownNameError, "unknown attack 'pgdd'; choose one of: "),
        ({"eps": "8/0"}, UsageError, "cannot parse eps '8/0'"),
        ({"eps": -1}, UsageError, "eps must be a positive finite number, got -1"),
        ({"batch_size": 0}, UsageError, "batch_size must be a positive integer, got 0"),
        ({"steps": True}, UsageError, "steps must be a positive integer, got True"),
        ({"n_examples": 0}, UsageError, "n_examples must be a positive integer, got 0"),
        ({"masking_examples": 0}, UsageError, "masking_examples must be a positive integer"),
        ({"norm": "l1"}, UsageError, "unknown norm 'l1'; choose one of: linf, l2"),
        ({"device": "tpu"}, UsageError, "unknown device 'tpu'; choose cpu, cuda[:n] or auto"),
        ({"seed": 1.5}, UsageError, "seed must be an integer, got 1.5"),
        (
            {"params": "mnist"},
            UsageError,
            "params must be 'cifar', 'imagenet', 'imagecorruptions' or 'auto', not 'mnist'",
        ),
        ({"amp": "yes"}, UsageError, "amp must be true or false, got 'yes'"),
        ({"strict": 1}, UsageError, "strict must be true or false, got 1"),
    ],
)
def test_validation_messages(kw, error, message) -> None:
    with pytest.raises(error, match="^" + re.escape(message)):
        EvalConfig(**kw)


def test_old_reports_give_their_config_too() -> None:
    old = {"data": "digits", "corruptions": ["fog"], "severities": [1, 3], "attack": ["pgd"],
           "eps": 0.03, "norm": "linf", "n_examples": 64, "batch_size": 32, "amp": False,
           "seed": 5, "params": "auto", "device": "cpu", "corruption_source": "rws kernels",
           "steps": {"pgd": 10}}  # fmt: skip
    cfg = Report([], old).config
    assert cfg == EvalConfig(corruptions=["fog"], severities=(1, 3), attack="pgd", eps=0.03,
                             n_examples=64, batch_size=32, seed=5, device="cpu")  # fmt: skip
    assert Report([], {**old, "corruption_source": "/data/c10c"}).config.corruption_source == (
        "/data/c10c"
    )


def test_evaluate_takes_a_config_or_keywords() -> None:
    torch.manual_seed(0)
    model = create_model("small-cnn").eval()
    x, y = torch.rand(24, 3, 32, 32), torch.randint(0, 10, (24,))
    cfg = EvalConfig(corruptions=["fog"], severities=(2,), batch_size=8, seed=3, device="cpu")
    by_config = evaluate(model, (x, y), cfg)
    by_keywords = evaluate(model, (x, y), corruptions=["fog"], severities=(2,), batch_size=8,
                           seed=3, device="cpu")  # fmt: skip
    assert by_config.to_dict()["variants"] == by_keywords.to_dict()["variants"]
    assert by_config.settings["config"] == cfg.to_dict() == by_keywords.settings["config"]
    assert by_config.config == cfg
    assert Report.from_dict(json.loads(json.dumps(by_config.to_dict()))).config == cfg
    with pytest.raises(UsageError, match="give an EvalConfig or keyword settings, not both"):
        evaluate(model, (x, y), cfg, seed=4)
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*colour"):
        evaluate(model, (x, y), colour="red")
