"""Paired statistics (rws.robustness.stats): exact McNemar, comparisons, accuracy from counts."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import rws.robustness.stats as stats_mod
from rws.robustness.stats import accuracy, compare, mcnemar_p


def test_mcnemar_exact_on_hand_made_table() -> None:
    # base right / variant wrong on 2 examples, base wrong / variant right on 8, 5 agree right.
    base = torch.tensor([1] * 2 + [0] * 8 + [1] * 5 + [0] * 3, dtype=torch.bool)
    other = torch.tensor([0] * 2 + [1] * 8 + [1] * 5 + [0] * 3, dtype=torch.bool)
    res = compare(base, other)
    assert (res["gained"], res["lost"]) == (8, 2)
    assert res["delta"] == pytest.approx(6 / 18)
    # two-sided exact: 2·P(X ≤ 2), X ~ Bin(10, 1/2) = 2·(1 + 10 + 45)/1024
    assert res["p_value"] == pytest.approx(112 / 1024, abs=1e-12)
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 5) == pytest.approx(1.0)
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)


def test_accuracy_from_counts_and_doctests() -> None:
    assert accuracy(torch.tensor([True, False, True, True])) == 0.75
    assert math.isnan(accuracy(torch.zeros(0, dtype=torch.bool)))
    result = doctest.testmod(stats_mod, extraglobs={"torch": torch}, verbose=False)
    assert result.attempted >= 2 and result.failed == 0
