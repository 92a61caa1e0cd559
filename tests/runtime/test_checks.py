"""rws.runtime.checks: the one home of numeric setting checks, with their exact messages."""

from __future__ import annotations

import math
import re

import pytest

from rws.errors import UsageError
from rws.runtime.checks import check_float, check_int, check_positive


def test_check_int() -> None:
    assert check_int("epochs", 3, 1) == 3 and check_int("seed", 0, 0) == 0
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(
            UsageError, match=re.escape(f"epochs must be an integer ≥ 1, got {bad!r}")
        ):
            check_int("epochs", bad, 1)


def test_check_positive() -> None:
    check_positive("steps", 1)
    check_positive("steps", None, optional=True)
    for bad in (0, -1, None, False, 1.5):
        with pytest.raises(
            UsageError, match=re.escape(f"steps must be a positive integer, got {bad!r}")
        ):
            check_positive("steps", bad)


def test_check_float() -> None:
    assert check_float("lr", 1, 0.0) == 1.0 and isinstance(check_float("lr", 1, 0.0), float)
    assert check_float("momentum", 0.9, 0.0, 1.0) == 0.9
    for bad, msg in [(-0.1, "≥ 0"), (math.nan, "≥ 0"), (True, "≥ 0"), ("0.1", "≥ 0")]:
        with pytest.raises(UsageError, match=re.escape(f"lr must be a number {msg}, got {bad!r}")):
            check_float("lr", bad, 0.0)
    with pytest.raises(UsageError, match=re.escape("momentum must be a number in [0, 1), got 1")):
        check_float("momentum", 1, 0.0, 1.0)
