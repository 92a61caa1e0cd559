"""rws.runtime.modes: eval mode for a block, each submodule's own mode given back."""

from __future__ import annotations

import pytest
from torch import nn

from rws.runtime.modes import eval_mode


def _model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a mixed state: frozen BatchNorm inside a training model
    return model


def test_eval_mode_sets_eval_and_restores_each_module() -> None:
    model = _model()
    before = [m.training for m in model.modules()]
    with eval_mode(model) as m:
        assert m is model
        assert not any(x.training for x in model.modules())
    assert [m.training for m in model.modules()] == before == [True, True, False, True]


def test_eval_mode_restores_on_error() -> None:
    model = _model()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == [True, True, False, True]
