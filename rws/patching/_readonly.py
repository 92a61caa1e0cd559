"""Read-only copies of JSON-like values, for the fields of the immutable patch types.

A :class:`ReadOnlyDict` is a ``dict`` and a :class:`ReadOnlyList` a ``list`` (so ``json.dumps``,
``==``, ``dict(x)`` and ``isinstance`` keep working), but every mutating method raises
``TypeError``. :func:`freeze` copies a value deeply into them; :func:`thaw` copies back to plain,
mutable ``dict``/``list`` values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn


def _refuse(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(
        f"{type(self).__name__} is read-only (a patch is immutable); "
        "build a new one with Patch.replace(...)"
    )


class ReadOnlyDict(dict):  # type: ignore[type-arg]
    """A ``dict`` whose values are frozen on construction and that refuses every change."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__((k, freeze(v)) for k, v in dict(*args, **kwargs).items())

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:  # copy, deepcopy and pickle rebuild, never mutate
        return (type(self), (dict(self),))


class ReadOnlyList(list):  # type: ignore[type-arg]
    """A ``list`` whose items are frozen on construction and that refuses every change."""

    __slots__ = ()

    def __init__(self, items: Iterable[Any] = ()) -> None:
        super().__init__(freeze(v) for v in items)

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = clear = extend = insert = pop = remove = reverse = sort = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self),))


def freeze(value: Any) -> Any:
    """A deep read-only copy of ``value``: dicts and lists (also nested in tuples) are copied into
    :class:`ReadOnlyDict`/:class:`ReadOnlyList`; other objects are returned as they are.

    Example:
        >>> d = freeze({"a": [1, 2]})
        >>> d == {"a": [1, 2]}, isinstance(d, dict)
        (True, True)
    """
    if isinstance(value, ReadOnlyDict | ReadOnlyList):
        return value  # frozen all the way down on construction
    if isinstance(value, dict):
        return ReadOnlyDict(value)
    if isinstance(value, list):
        return ReadOnlyList(value)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):  # named tuples kept as they are
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A deep plain copy of ``value``: (read-only) dicts and lists become mutable ``dict``/``list``.

    Example:
        >>> thaw(freeze({"a": [1]}))["a"].append(2)
    """
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(thaw(v) for v in value)
    return value
