"""Strict JSON for untrusted files: duplicate keys, non-finite or oversized numbers and deep
nesting are refused in one line, never a crash or a silent "last key wins".

Python's ``json`` keeps the last of two equal keys (a ``scale`` given twice), reads ``1e400`` as
``inf``, ``NaN`` and ``Infinity`` as floats, and raises ``RecursionError`` on deep nesting (its C
decoder stops there safely): :func:`loads_strict` refuses each with a
:class:`~rws.errors.MalformedInputError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from rws.errors import MalformedInputError


class _Refused(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Refused(f"duplicate key {key!r}")
    return out


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:24]} is out of range")
    return value


def _constant(text: str) -> float:
    raise _Refused(f"{text} is not a JSON number")


def loads_strict(raw: str | bytes, path: str | os.PathLike, what: str = "JSON") -> Any:
    """Parse untrusted JSON text.

    Raises:
        MalformedInputError: not UTF-8 or not JSON; a duplicate key in an object; a number that is
            not finite; ``NaN``/``Infinity``; nesting deeper than
            the interpreter's recursion limit (about 1,000 levels). The message names ``path``
            and ``what`` (e.g. "the safetensors header").
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError:
        raise MalformedInputError(path, f"{what} is not UTF-8 text") from None
    try:
        return json.loads(
            text, object_pairs_hook=_pairs, parse_float=_float,
            parse_constant=_constant,
        )  # fmt: skip
    except _Refused as e:
        raise MalformedInputError(path, f"{what}: {e}") from None
    except RecursionError:
        raise MalformedInputError(path, f"{what} is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and integers of over 4,300 digits
        raise MalformedInputError(path, f"{what} is not valid JSON ({_brief(e)})") from None


def _brief(err: ValueError) -> str:
    return " ".join(str(err).split())[:80]
