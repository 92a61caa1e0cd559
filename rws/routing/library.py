"""A router's signature library: ``(patch, corruption)`` pairs from paths, ``hf://`` references,
patches or library folders.

An item is a :class:`~rws.patching.patch.Patch` or a reference (a path or an ``hf://``
reference) to a patch file, alone (its ``corruption`` tag or recorded training names the
corruption) or paired with the corruption; a folder (or a ``str`` naming one) is read as a
signature library (:meth:`rws.analysis.SignatureLibrary.from_folder`). The reference of each
entry is kept, so that a saved router can find its signatures again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rws.analysis import SignatureLibrary
from rws.errors import UsageError
from rws.io.hub_ref import is_hub_ref
from rws.patching.patch import Patch, load
from rws.recipes.operating_point import patch_corruptions

__all__ = ["NONE", "Entry", "LibraryArg", "resolve_library"]

NONE = "none"
Ref = str | os.PathLike
LibraryArg = Iterable[Patch | Ref | tuple[Patch | Ref, str]] | Ref | SignatureLibrary


@dataclass(frozen=True)
class Entry:
    """One routed signature: the patch at its own scale, its corruption, where it came from."""

    patch: Patch
    corruption: str
    reference: str = ""


def _one(item: Any, corruption: str | None) -> list[Entry]:
    if isinstance(item, Patch):
        found = corruption or next(iter(patch_corruptions(item)), None)
        if not found:
            raise UsageError(f"signature {item.label}: no corruption tag; pass (patch, corruption)")
        return [Entry(item, found, item.source)]
    if isinstance(item, str | os.PathLike):
        ref = os.fspath(item)
        if not is_hub_ref(ref) and os.path.isdir(ref):
            if corruption:
                raise UsageError(f"{ref}: a library folder takes no corruption label")
            lib = SignatureLibrary.from_folder(ref)
            return [Entry(e.patch, e.corruption, e.patch.source) for e in lib.entries]
        e = _one(load(ref), corruption)[0]
        return [Entry(e.patch, e.corruption, ref)]
    raise UsageError(
        f"library items must be patches, paths or (patch, corruption) pairs, not "
        f"{type(item).__name__}"
    )


def resolve_library(library: LibraryArg) -> list[Entry]:
    """The entries of ``library``, in order.

    Raises:
        UsageError: an empty library, an unlabelled patch, two signatures for one corruption,
            or the reserved name ``none``.
        InputFileError, PatchFormatError, HubError: a reference that cannot be read.
    """
    if isinstance(library, SignatureLibrary):
        items: Sequence[Any] = [(e.patch, e.corruption) for e in library.entries]
    elif isinstance(library, str | os.PathLike):
        items = [library]
    else:
        items = list(library)
    entries: list[Entry] = []
    for item in items:
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[1], str):
                raise UsageError("a library pair is (patch or path, corruption name)")
            entries += _one(item[0], item[1])
        else:
            entries += _one(item, None)
    if not entries:
        raise UsageError("the signature library is empty; give at least one (patch, corruption)")
    seen: set[str] = set()
    for e in entries:
        if e.corruption == NONE:
            raise UsageError(f"signature {e.patch.label}: 'none' is reserved for clean batches")
        if e.corruption in seen:
            raise UsageError(f"two signatures for {e.corruption!r}; keep one per corruption")
        seen.add(e.corruption)
    return entries
