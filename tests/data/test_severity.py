"""rws.data.severity: the one home of severity checks and parsers (API values and CLI text)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rws.data.severity import check_severity, parse_severities, parse_severity, severity_range
from rws.errors import UsageError


def test_check_severity_accepts_integers_one_to_five() -> None:
    assert [check_severity(s) for s in (1, 3, 5)] == [1, 3, 5]
    assert check_severity(np.int64(4)) == 4 and type(check_severity(np.int64(4))) is int


@pytest.mark.parametrize("bad", [0, 6, 2.0, True, "3", None])
def test_check_severity_names_what_is_wrong(bad: object) -> None:
    msg = f"severity must be an integer from 1 to 5, got {bad!r}"
    with pytest.raises(UsageError, match=re.escape(msg)):
        check_severity(bad)
    with pytest.raises(UsageError, match=re.escape(msg.replace("severity", "--level", 1))):
        check_severity(bad, what="--level")


def test_severity_range() -> None:
    assert severity_range(3) == (3, 3)
    assert severity_range((1, 5)) == (1, 5)
    assert severity_range([2, 4]) == (2, 4)
    for bad in ((4, 2), (0, 3), (1, 2, 3), (1.0, 2)):
        with pytest.raises(UsageError, match="severity must be 1–5 or a range lo-hi within 1–5"):
            severity_range(bad)  # type: ignore[arg-type]


def test_parse_severity() -> None:
    assert parse_severity("5") == (5, 5)
    assert parse_severity(" 3-5 ") == (3, 5)
    for bad in ("0", "6", "5-3", "a", "1-", "2.5"):
        with pytest.raises(UsageError, match=re.escape(f"--severity {bad!r}: give a severity 1–5")):
            parse_severity(bad)
    with pytest.raises(UsageError, match=re.escape("--sev '9': give")):
        parse_severity("9", option="--sev")


def test_parse_severities() -> None:
    assert parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert parse_severities("1,3,5") == [1, 3, 5]
    assert parse_severities("1-2,5,2") == [1, 2, 5]  # duplicates kept once, first order
    with pytest.raises(UsageError, match=re.escape("--severities 'x': use a range like 1-5")):
        parse_severities("x")
    for bad in ("0-2", "4-2", "6"):
        with pytest.raises(UsageError, match="severities run from 1 to 5"):
            parse_severities(bad)
