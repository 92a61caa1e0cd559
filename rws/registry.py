"""One small registry type shared by codecs, methods, models, corruptions and attacks.

Entries are registered by a decorator next to their definition; a duplicate name raises; an unknown
name raises :class:`~rws.errors.UnknownNameError` listing the choices.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rws.errors import UnknownNameError

T = TypeVar("T")


def summary_of(obj: object) -> str:
    """The first paragraph of ``obj``'s docstring on one line (``""`` without a docstring)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its documentation."""

    name: str
    obj: T
    summary: str = ""
    url: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name → entry mapping for one kind of thing (``"codec"``, ``"model"`` …)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, obj: T, *, summary: str = "", url: str = "", **info: Any) -> T:
        """Register ``obj`` under ``name``; a duplicate raises ``ValueError`` (a programming bug)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, obj, summary, url, dict(info))
        return obj

    def register(
        self, name: str, *, summary: str = "", url: str = "", **info: Any
    ) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            doc = summary or summary_of(obj)
            return self.add(name, obj, summary=doc, url=url, **info)

        return deco

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name``; raises ``UnknownNameError`` listing the choices."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def get(self, name: str) -> T:
        """The object registered under ``name``."""
        return self.entry(name).obj

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob, in registration order."""
        return [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
