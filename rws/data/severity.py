"""Severities 1–5 of the corruption benchmarks: the one place that checks and parses them (API
values, CLI text, the released CIFAR-10-C arrays' blocks)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from rws.errors import UsageError

LEVELS = range(1, 6)


def _is_level(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value in LEVELS


def check_severity(value: object, *, what: str = "severity") -> int:
    """``value`` if it is an integer from 1 to 5.

    Raises:
        UsageError: anything else, naming ``what``.
    """
    if not _is_level(value):
        raise UsageError(f"{what} must be an integer from 1 to 5, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def severity_range(severity: int | Sequence[int]) -> tuple[int, int]:
    """``3`` → ``(3, 3)``; ``(1, 5)`` → ``(1, 5)``.

    Raises:
        UsageError: a value outside 1–5, or lo > hi.
    """
    pair = (severity, severity) if isinstance(severity, int) else tuple(severity)
    if len(pair) != 2 or not all(_is_level(s) for s in pair) or pair[0] > pair[1]:
        raise UsageError(f"severity must be 1–5 or a range lo-hi within 1–5, got {severity!r}")
    return int(pair[0]), int(pair[1])


def parse_severity(text: str, *, option: str = "--severity") -> tuple[int, int]:
    """``"5"`` → ``(5, 5)``; ``"3-5"`` → ``(3, 5)``.

    Raises:
        UsageError: not ``S`` or ``LO-HI`` with 1 ≤ LO ≤ HI ≤ 5.
    """
    lo, sep, hi = text.strip().partition("-")
    try:
        pair = (int(lo), int(hi if sep else lo))
    except ValueError:
        pair = None
    if pair is None or not (1 <= pair[0] <= pair[1] <= 5):
        raise UsageError(f"{option} {text!r}: give a severity 1–5 or a range like 3-5")
    return pair


def parse_severities(text: str, *, option: str = "--severities") -> list[int]:
    """``"1-5"`` → ``[1, 2, 3, 4, 5]``; ``"1,3,5"`` → ``[1, 3, 5]``; mixed ``"1-2,5"`` works too.

    Raises:
        UsageError: not integers and ranges, or a severity outside 1–5.
    """
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise UsageError(
                f"{option} {text!r}: use a range like 1-5 or a list like 1,3,5"
            ) from None
        if not (first in LEVELS and last in LEVELS) or first > last:
            raise UsageError(f"{option} {text!r}: severities run from 1 to 5")
        out += [s for s in range(first, last + 1) if s not in out]
    return out
