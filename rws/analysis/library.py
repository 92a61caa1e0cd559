"""A signature library: known signatures labelled by corruption, read from a folder (an
``index.json`` or the tagged patches it holds) or built from patches."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rws.errors import (
    FormatVersionError,
    InputFileError,
    MalformedInputError,
    PatchFormatError,
    UsageError,
)
from rws.patching.patch import Patch
from rws.patching.patch import load as load_patch

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
SHIPPED = Path(__file__).resolve().parents[1] / "_signatures"
"""The library shipped with rws (package data; ``signatures/`` in a checkout): ``rws demo``'s
ResNet-20 on digits (``origin.safetensors``, ``clean.safetensors``) and its int8 signatures."""


@dataclass(frozen=True)
class LibraryEntry:
    """One known signature: the patch and the corruption it was made for."""

    patch: Patch
    corruption: str
    seed: int | None = None
    dataset: str | None = None
    arch: str | None = None

    @property
    def label(self) -> str:
        """The patch's label."""
        return self.patch.label


def _corruption_of(patch: Patch) -> str | None:
    value = patch.tags.get("corruption") or patch.provenance.get("corruption")
    return str(value) if value else None


@dataclass(frozen=True)
class SignatureLibrary:
    """Known signatures labelled by corruption (see :meth:`from_folder`)."""

    entries: tuple[LibraryEntry, ...]
    root: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def corruptions(self) -> list[str]:
        """The distinct corruptions, sorted."""
        return sorted({e.corruption for e in self.entries})

    def without(self, patch: Patch) -> SignatureLibrary:
        """The library minus every entry with ``patch``'s content (leave-one-out evaluation)."""
        fp = patch.fingerprint()
        kept = tuple(e for e in self.entries if e.patch.fingerprint() != fp)
        return SignatureLibrary(kept, root=self.root)

    @classmethod
    def from_patches(
        cls, patches: Sequence[Patch], corruptions: Sequence[str] | None = None
    ) -> SignatureLibrary:
        """A library from patches, labelled by ``corruptions`` or by each ``tags["corruption"]``.

        Raises:
            UsageError: a patch has no corruption label, or the lengths differ.
        """
        if corruptions is not None and len(corruptions) != len(patches):
            raise UsageError(f"{len(patches)} patches but {len(corruptions)} corruption labels")
        entries = []
        for i, p in enumerate(patches):
            c = corruptions[i] if corruptions is not None else _corruption_of(p)
            if not c:
                raise UsageError(f"signature {p.label} has no 'corruption' tag; label it")
            entries.append(LibraryEntry(p, c))
        return cls(tuple(entries))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> SignatureLibrary:
        """Read a library folder.

        With an ``index.json`` (``{"signatures": [{"file", "corruption", "seed", "dataset",
        "arch"}, …]}``) the listed files; without one, every ``*.safetensors`` patch in the
        folder that has a ``corruption`` tag (other files, such as checkpoints, are passed over).

        Raises:
            InputFileError: the folder or a listed file does not exist.
            MalformedInputError: ``index.json`` is not valid.
            PatchFormatError: a listed file is not a patch.
            UsageError: the folder holds no labelled signature.
        """
        root = Path(folder)
        if not root.is_dir():
            raise InputFileError(root, "no such folder" if not root.exists() else "not a folder")
        index = root / INDEX_FILE
        entries = _read_index(index) if index.is_file() else _scan(root)
        if not entries:
            raise UsageError(
                f"{root}: no signatures (no {INDEX_FILE} and no *.safetensors patch tagged "
                "with a corruption)"
            )
        return cls(tuple(entries), root=os.fspath(root))


def _read_index(index: Path) -> list[LibraryEntry]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedInputError(index, f"not valid JSON ({type(e).__name__})") from None
    items = data.get("signatures") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise MalformedInputError(index, 'expected {"signatures": [{"file", "corruption"…}]}')
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            raise MalformedInputError(index, f"signatures[{i}] has no 'file' string")
        patch = load_patch(index.parent / item["file"])
        corruption = item.get("corruption") or _corruption_of(patch)
        if not corruption:
            raise MalformedInputError(index, f"signatures[{i}] ({item['file']}) has no corruption")
        seed = item.get("seed")
        entries.append(
            LibraryEntry(
                patch,
                str(corruption),
                seed=int(seed) if isinstance(seed, int | float) else None,
                dataset=item.get("dataset"),
                arch=item.get("arch"),
            )
        )
    return entries


def _scan(root: Path) -> list[LibraryEntry]:
    entries = []
    for path in sorted(root.glob("*.safetensors")):
        try:
            patch = load_patch(path)
        except FormatVersionError:
            raise
        except PatchFormatError:
            logger.debug("%s: not a patch, passed over", path)
            continue
        corruption = _corruption_of(patch)
        if corruption is None:
            logger.warning("%s: no 'corruption' tag, left out of the library", path)
            continue
        prov = patch.provenance
        seed = patch.tags.get("seed")
        entries.append(
            LibraryEntry(
                patch,
                corruption,
                seed=int(seed) if seed and str(seed).lstrip("-").isdigit() else None,
                dataset=patch.tags.get("dataset") or prov.get("dataset"),
                arch=patch.tags.get("arch") or prov.get("arch"),
            )
        )
    return entries
