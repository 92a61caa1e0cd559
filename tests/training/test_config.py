"""Training config (rws.training.config): validation messages, JSON round trip, schedules."""

from __future__ import annotations

import json

import pytest

from rws.errors import UnknownNameError, UsageError
from rws.training import TrainConfig


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"epochs": 0}, UsageError, "epochs must be an integer ≥ 1, got 0"),
        ({"lr": 0}, UsageError, "lr must be a number > 0"),
        ({"momentum": 1.0}, UsageError, r"momentum must be a number in \[0, 1\)"),
        ({"batch_size": 2.5}, UsageError, "batch_size must be an integer"),
        ({"optimizer": "rmsprop"}, UnknownNameError, "unknown optimizer 'rmsprop'"),
        ({"schedule": "linear"}, UnknownNameError, "unknown lr schedule 'linear'"),
        ({"corruptions": ("fgo",)}, UnknownNameError, "unknown corruption 'fgo'"),
        ({"severity": 7}, UsageError, "severity must be 1–5 or a range"),
        ({"severity": (4, 2)}, UsageError, "severity must be 1–5 or a range"),
        ({"device": "tpu"}, UsageError, "unknown device 'tpu'"),
    ],
)
def test_config_validation(kw, error, message) -> None:
    with pytest.raises(error, match=message):
        TrainConfig(**kw)


def test_config_round_trip_and_schedules() -> None:
    cfg = TrainConfig(corruptions="fog", severity=3, lr=1)
    assert cfg.corruptions == ("fog",) and cfg.severity == (3, 3) and isinstance(cfg.lr, float)
    d = {**cfg.to_dict(), "future_key": [1]}
    back = TrainConfig.from_dict(json.loads(json.dumps(d)))
    assert back == TrainConfig(corruptions=("fog",), severity=(3, 3), lr=1.0, extra=back.extra)
    assert back.extra == {"future_key": [1]} and back.to_dict() == d
    ref = TrainConfig()  # the reference: 50 epochs, ×0.1 at 20 and 40
    assert (ref.epochs, ref.lr, ref.momentum, ref.weight_decay, ref.batch_size) == (
        50, 0.01, 0.9, 5e-4, 128)  # fmt: skip
    lrs = [ref.lr_at(e) for e in (0, 19, 20, 39, 40, 49)]
    assert lrs == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])
    cos = TrainConfig(epochs=4, schedule="cosine", lr=1.0)
    assert [cos.lr_at(e) for e in range(4)] == pytest.approx([1.0, 0.8536, 0.5, 0.1464], abs=1e-4)
    assert TrainConfig(epochs=1).lr_at(0) == 0.01
