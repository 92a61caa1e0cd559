"""Checks of numeric settings (one home; every layer's configs call them): one-line ``UsageError``s
that name the setting."""

from __future__ import annotations

import math

from rws.errors import UsageError


def check_int(name: str, value: object, low: int) -> int:
    """``value`` if it is an integer ≥ ``low``; else ``UsageError`` naming ``name``.

    Example:
        >>> check_int("epochs", 3, 1)
        3
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return value


def check_positive(name: str, value: object, *, optional: bool = False) -> None:
    """``value`` must be an integer ≥ 1 (or None when ``optional``); else ``UsageError``.

    Example:
        >>> check_positive("steps", None, optional=True)
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")


def check_float(name: str, value: object, low: float, high: float = math.inf) -> float:
    """``value`` as a float if finite and in ``[low, high)``; else ``UsageError`` naming ``name``.

    Example:
        >>> check_float("lr", 0.1, 0.0)
        0.1
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value < high:  # type: ignore[arg-type]
        span = f"in [{low:g}, {high:g})" if high < math.inf else f"≥ {low:g}"
        raise UsageError(f"{name} must be a number {span}, got {value!r}")
    return float(value)  # type: ignore[arg-type]
