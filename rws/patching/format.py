"""The on-disk patch format: a safetensors file whose ``__metadata__["rws"]`` is a JSON manifest.

Layout (DESIGN.md §3): for every patched tensor ``NAME``, the codec's stored tensors are saved under
``NAME`` (float codecs) or ``NAME::<suffix>`` (quantized codecs). The manifest::

    {"format": 1, "kind": "delta", "scale": 1.0, "name": ..., "description": ..., "tags": {...},
     "tensors": {NAME: {"shape", "dtype", "codec", "params", "numel", "delta_l2", "base_l2",
                        "base_sha256"}},
     "skipped": [names whose delta was exactly zero], "base": {"numel", "tensors"},
     "provenance": {...}}

Format 2 adds one optional per-tensor key, ``"fixed": true``: the tensor is applied at full weight
whatever the scale (:mod:`rws.patching.tensor`). A patch is written as format 2 only when it has a
fixed tensor, so that an rws that knows only format 1 refuses it instead of scaling a replacement;
every other patch is still written, byte for byte, as format 1, and both load.

Readers refuse unknown major versions and kinds; unknown extra keys are kept and written back.
Kinds come from :data:`PATCH_KINDS`: ``delta`` and ``composed`` are registered here, each method's
kind by :func:`rws.methods.register_method`, ``rift`` by :mod:`rws.recipes.rift`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from rws.errors import CheckpointError, FormatVersionError, InputFileError, PatchFormatError
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import save_tensors
from rws.registry import Registry

FORMAT_VERSION = 2  # the newest format read; written only by patches that need it
PLAIN_FORMAT = 1  # what a patch without fixed tensors is written as
META_KEY = "rws"
APPLIED_KEY = "rws.applied"
SEP = "::"

PATCH_KINDS: Registry[str] = Registry("patch kind")


def register_kind(name: str, summary: str = "", *, url: str = "", exist_ok: bool = False) -> str:
    """Register a patch kind (the manifest's ``kind``) so that patches of it can be built and read.

    Args:
        name: the kind, e.g. ``"rift"``.
        summary, url: documentation for ``rws list``.
        exist_ok: return quietly when ``name`` is already registered (several methods may make
            one kind); otherwise a duplicate raises ``ValueError``.

    Returns:
        ``name``.

    Example:
        >>> "delta" in list_kinds()
        True
    """
    if exist_ok and name in PATCH_KINDS:
        return name
    return PATCH_KINDS.add(name, name, summary=summary, url=url)


def list_kinds(pattern: str = "*") -> list[str]:
    """Registered patch kinds matching a glob, in registration order."""
    return PATCH_KINDS.names(pattern)


register_kind("delta", "tuned − base on the selected tensors")
register_kind("composed", "a weighted sum of patches, re-encoded (rws.compose, p1 + p2)")


def write_patch(
    path: str | os.PathLike, stored: Mapping[str, torch.Tensor], manifest: Mapping[str, Any]
) -> None:
    """Write stored tensors and the manifest atomically (format 2 only with a fixed tensor)."""
    fixed = any(info.get("fixed") for info in manifest.get("tensors", {}).values())
    meta = {"format": FORMAT_VERSION if fixed else PLAIN_FORMAT, **manifest}
    save_tensors(path, stored, {META_KEY: json.dumps(meta)})  # keeps depth order


class StoredParts(Mapping[str, torch.Tensor]):
    """One patched tensor's stored parts by suffix, read from the file only when used."""

    def __init__(self, file: TensorFile, keys: dict[str, str]) -> None:
        self._file, self._keys = file, keys

    def __getitem__(self, suffix: str) -> torch.Tensor:
        return self._file.get(self._keys[suffix])

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def nbytes(self) -> int:
        """Stored bytes, from the header (nothing is read)."""
        return sum(self._file.nbytes(k) for k in self._keys.values())


def read_patch(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, StoredParts]]:
    """Read a patch file's manifest; tensors are read lazily, one at a time, when decoded.

    Raises:
        InputFileError: missing or unreadable.
        PatchFormatError: not safetensors, no or malformed manifest, parts missing or stray.
        FormatVersionError: a major format version this rws does not know.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise InputFileError(p, "no such file" if not os.path.exists(p) else "not a file")
    try:
        file = TensorFile(p)
    except CheckpointError as err:
        raise PatchFormatError(p, err.reason) from None
    raw_meta = file.metadata.get(META_KEY)
    if raw_meta is None:
        raise PatchFormatError(p, "not an rws patch (no 'rws' metadata); is it a checkpoint?")
    try:
        manifest = json.loads(raw_meta)
    except json.JSONDecodeError:
        raise PatchFormatError(p, "the 'rws' metadata is not valid JSON") from None
    check_manifest(p, manifest)
    keys: dict[str, dict[str, str]] = {n: {} for n in manifest["tensors"]}
    for key in file:
        name, _, suffix = key.partition(SEP)
        if name not in keys:
            raise PatchFormatError(p, f"stored tensor {key!r} is not in the manifest")
        keys[name][suffix] = key
    return manifest, {n: StoredParts(file, k) for n, k in keys.items()}


def check_manifest(path: str, manifest: Any) -> None:
    """Validate the manifest's version and required keys (one clear message per problem)."""
    if not isinstance(manifest, dict):
        raise PatchFormatError(path, "the 'rws' metadata is not a JSON object")
    version = manifest.get("format")
    if not isinstance(version, int):
        raise PatchFormatError(path, "the 'rws' metadata has no integer 'format' version")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            path,
            f"patch format {version} is newer than this rws understands ({FORMAT_VERSION}); "
            "upgrade rws",
        )
    if version < 1:
        raise FormatVersionError(path, f"unknown patch format version {version}")
    kind = manifest.get("kind")
    if not isinstance(kind, str) or kind not in PATCH_KINDS:
        raise PatchFormatError(path, f"unknown patch kind {kind!r}")
    scale = manifest.get("scale", 1.0)
    if not isinstance(scale, int | float) or isinstance(scale, bool):
        raise PatchFormatError(path, "'scale' is not a number")
    tensors = manifest.get("tensors")
    if not isinstance(tensors, dict):
        raise PatchFormatError(path, "the manifest has no 'tensors' table")
    for name, info in tensors.items():
        if not isinstance(info, dict):
            raise PatchFormatError(path, f"tensor {name!r}: manifest entry is not an object")
        for key in ("shape", "dtype", "codec"):
            if key not in info:
                raise PatchFormatError(path, f"tensor {name!r}: manifest entry lacks {key!r}")
        if "fixed" in info and (not isinstance(info["fixed"], bool) or version < 2):
            raise PatchFormatError(path, f"tensor {name!r}: 'fixed' needs format 2 and true/false")
        if not isinstance(info["shape"], list) or not all(
            isinstance(s, int) and s >= 0 for s in info["shape"]
        ):
            raise PatchFormatError(path, f"tensor {name!r}: malformed shape {info['shape']!r}")


def read_applied(metadata: Mapping[str, str], path: str) -> list[dict[str, Any]]:
    """The stack of patches recorded in a checkpoint's metadata (newest last)."""
    raw = metadata.get(APPLIED_KEY)
    if raw is None:
        return []
    try:
        stack = json.loads(raw)
    except json.JSONDecodeError:
        raise PatchFormatError(path, f"the {APPLIED_KEY!r} metadata is not valid JSON") from None
    if not isinstance(stack, list) or not all(isinstance(e, dict) for e in stack):
        raise PatchFormatError(path, f"the {APPLIED_KEY!r} metadata is not a list of objects")
    return stack


def applied_metadata(metadata: Mapping[str, str], stack: list[dict[str, Any]]) -> dict[str, str]:
    """Checkpoint metadata with the applied stack replaced (dropped when empty)."""
    out = {k: v for k, v in metadata.items() if k != APPLIED_KEY}
    if stack:
        out[APPLIED_KEY] = json.dumps(stack)
    return out
