"""``hf://`` references: parsing, and naming a file of the Hugging Face cache by its reference.

Forms (model repos only)::

    hf://ORG/NAME/FILE[@REV]    one file (FILE may hold folders); REV: a branch, tag or commit
    hf://ORG/NAME@REV/FILE      the same, as huggingface_hub's file system spells it
    hf://ORG/NAME[@REV]         a repo

Pure string work: nothing here talks to the Hub (see :mod:`rws.io.hub_fetch`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePath

from rws.errors import HubReferenceError

SCHEME = "hf://"
FORM = "expected hf://ORG/NAME/FILE[@REV]"
_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?\Z")
_CACHED = re.compile(
    r"(?:^|/)models--(?P<repo>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})(?:/(?P<file>.+))?\Z"
)


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://`` reference.

    Attributes:
        repo_id: ``ORG/NAME``.
        filename: the file's path in the repo; None for the whole repo.
        revision: a branch, tag or commit; None for the default branch.
    """

    repo_id: str
    filename: str | None = None
    revision: str | None = None

    @property
    def uri(self) -> str:
        """The canonical spelling, ``hf://ORG/NAME/FILE@REV``."""
        path = self.repo_id + (f"/{self.filename}" if self.filename else "")
        return SCHEME + path + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(path: object) -> bool:
    """True for an ``hf://`` string, or a ``Path`` made from one (it reads ``hf:/…``)."""
    if isinstance(path, PurePath):
        return path.parts[:1] == ("hf:",)
    return isinstance(path, str) and path.startswith(SCHEME)


def parse_ref(text: str | os.PathLike[str]) -> HubRef:
    """Parse ``hf://ORG/NAME[/FILE][@REV]`` (or ``hf://ORG/NAME@REV[/FILE]``).

    Raises:
        HubReferenceError: anything else (missing ORG/NAME, bad names, ``..`` in FILE or REV,
            two or empty revisions, a dataset or Space repo).

    Example:
        >>> parse_ref("hf://org/fog/fog.rws.safetensors@v1")
        HubRef(repo_id='org/fog', filename='fog.rws.safetensors', revision='v1')
    """
    if isinstance(text, PurePath) and is_hub_ref(text):
        text = SCHEME + "/".join(text.parts[1:])
    text = os.fspath(text)
    if not text.startswith(SCHEME):
        raise HubReferenceError(text, FORM)
    parts = text[len(SCHEME) :].split("/", 2)
    if len(parts) < 2:
        raise HubReferenceError(text, f"no repo name; {FORM}")
    org, (name, at, revision) = parts[0], parts[1].partition("@")
    filename = parts[2] if len(parts) == 3 else ""
    if "@" in filename:
        if at:
            raise HubReferenceError(text, "two revisions; give one, after FILE")
        filename, at, revision = filename.partition("@")
    if at and not revision:
        raise HubReferenceError(text, "empty revision after '@'")
    if org in ("datasets", "spaces"):
        raise HubReferenceError(text, "rws reads model repos only")
    for part, what in ((org, "owner"), (name, "repo name")):
        if not _PART.match(part) or "--" in part or ".." in part or len(part) > 96:
            raise HubReferenceError(
                text, f"bad {what} {part!r} (letters, digits, '-', '_', '.'); {FORM}"
            )
    if filename and any(seg in ("", ".", "..") for seg in filename.split("/")):
        raise HubReferenceError(text, f"bad file path {filename!r} in the repo")
    if revision:
        check_revision(revision, text)
    return HubRef(f"{org}/{name}", filename or None, revision or None)


def check_revision(revision: str, ref: str | None = None) -> str:
    """Refuse a revision that is no branch, tag or commit name: ``..``, ``.`` or empty segments,
    a leading ``/``, a backslash or control characters (huggingface_hub writes a file named by the
    revision in the cache: ``@../../x`` would write outside it). Returns ``revision``.

    Raises:
        HubReferenceError: a bad revision.
    """
    bad = any(seg in ("", ".", "..") for seg in revision.split("/"))
    if bad or "\\" in revision or any(ord(c) < 0x20 or ord(c) == 0x7F for c in revision):
        raise HubReferenceError(ref or revision, f"bad revision {revision!r}")
    return revision


def repo_ref(text: str) -> HubRef:
    """``ORG/NAME[/FILE][@REV]``, with or without ``hf://``, as a :class:`HubRef`."""
    return parse_ref(text if is_hub_ref(text) else SCHEME + text)


def hub_reference(path: str | os.PathLike[str]) -> str | None:
    """``hf://ORG/NAME/FILE@COMMIT`` for a file (or folder) in a Hugging Face cache snapshot.

    Example:
        >>> hub_reference("/c/hub/models--org--fog/snapshots/" + "a" * 40 + "/fog.safetensors")
        'hf://org/fog/fog.safetensors@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    """
    m = _CACHED.search(os.fspath(path).replace(os.sep, "/"))
    if m is None or "--" not in m["repo"]:
        return None
    org, _, name = m["repo"].partition("--")
    return HubRef(f"{org}/{name}", m["file"] or None, m["commit"]).uri
