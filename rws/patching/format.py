"""The on-disk patch format: a safetensors file whose ``__metadata__["rws"]`` is a JSON manifest.

Layout (DESIGN.md §3): for every patched tensor ``NAME``, the codec's stored tensors are saved under
``NAME`` (float codecs) or ``NAME::<suffix>`` (quantized codecs). The manifest::

    {"format": 1, "kind": "delta", "scale": 1.0, "name": ..., "description": ..., "tags": {...},
     "tensors": {NAME: {"shape", "dtype", "codec", "params", "numel", "delta_l2", "base_l2",
                        "base_sha256"}},
     "skipped": [names whose delta was exactly zero], "base": {"numel", "tensors"},
     "provenance": {...}}

Format 2 adds one optional per-tensor key, ``"fixed": true``: the tensor is applied at full weight
whatever the scale (:mod:`rws.patching.tensor`).

Format 3 (written since the compression issue; formats 1 and 2 still load) is lean: it stores only
what the file cannot tell. Patch-wide ``dtype``, ``codec`` and ``blocksize`` defaults; per tensor
only the differences, short keys (``s`` shape, ``t`` dtype, ``c`` codec, ``b`` block size, ``p``
sparsity parameters, ``e`` codec error, ``d`` ‖δ‖, ``w`` ‖w‖, ``f`` the first 64 bits of the base
tensor's sha256, ``fixed``), numbers to 3-4 significant digits; the shape only when the main stored
tensor does not have it; ``base.sha256`` fingerprints the whole base; empty labels are left out.
:func:`read_patch` expands every version to the format-1 entry layout.

The manifest JSON is parsed strictly (:func:`rws.io.json_read.loads_strict`): a duplicate key, a
non-finite number, a dimension that is not a non-negative integer are malformed input (exit 3).

Readers refuse unknown major versions and kinds; unknown extra keys are kept and written back.
Kinds come from :data:`PATCH_KINDS`: ``delta`` and ``composed`` are registered here, each method's
kind by :func:`rws.methods.register_method`, ``rift`` by :mod:`rws.recipes.rift`.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from rws.errors import CheckpointError, FormatVersionError, PatchFormatError
from rws.io.json_read import loads_strict
from rws.io.outputs import check_input_file
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import save_tensors
from rws.patching.codecs import CODECS
from rws.patching.tensor import TensorDelta, is_fingerprint
from rws.registry import Registry

FORMAT_VERSION = 3  # the newest format read, and the one written
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


def _finite(obj: Any) -> Any:
    """JSON-able ``obj`` with every NaN/inf float (an unmeasured value in a provenance, such as
    a search point's metric) written as null: the manifest is strict JSON, read strictly."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_patch(
    path: str | os.PathLike, stored: Mapping[str, torch.Tensor], manifest: Mapping[str, Any]
) -> None:
    """Write stored tensors and a format-3 manifest (:func:`tensor_table`'s) atomically."""
    meta = _finite({"format": FORMAT_VERSION, **manifest})
    text = json.dumps(meta, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    save_tensors(path, stored, {META_KEY: text})  # keeps depth order


def tensor_table(tensors: Mapping[str, TensorDelta]) -> dict[str, Any]:
    """The manifest's patch-wide defaults (the most common dtype, codec and block size) and
    ``tensors`` table, format 3."""
    defaults: dict[str, Any] = {}
    for key, values in (
        ("dtype", [t.dtype for t in tensors.values()]),
        ("codec", [t.encoded.codec for t in tensors.values()]),
        ("blocksize", [t.encoded.params.get("blocksize") for t in tensors.values()]),
    ):
        common = Counter(v for v in values if v is not None).most_common(1)
        if common:
            defaults[key] = common[0][0]
    table = {n: t.manifest(defaults, shape_stored=_shape_stored(t)) for n, t in tensors.items()}
    return {**defaults, "tensors": table}


def _shape_stored(t: TensorDelta) -> bool:
    """Whether the main stored tensor (``NAME`` or ``NAME::q``) has the tensor's shape."""
    parts, main = t.encoded.tensors, "" if "" in t.encoded.tensors else "q"
    if main not in parts or "sparse" in t.encoded.params:
        return False
    shape = parts.shape(main) if isinstance(parts, StoredParts) else parts[main].shape
    return tuple(shape) == tuple(t.shape)


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

    def shape(self, suffix: str) -> tuple[int, ...]:
        """A stored part's shape, from the header (nothing is read)."""
        return tuple(self._file.shape(self._keys[suffix]))


def read_patch(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, StoredParts]]:
    """Read a patch file's manifest; tensors are read lazily, one at a time, when decoded.

    Raises:
        InputFileError: missing or unreadable.
        PatchFormatError: not safetensors, no or malformed manifest, parts missing or stray.
        FormatVersionError: a major format version this rws does not know.
    """
    p = check_input_file(path)  # missing, or a FIFO or device: refused before any open()
    try:
        file = TensorFile(p)
    except CheckpointError as err:
        raise PatchFormatError(p, err.reason) from None
    raw_meta = file.metadata.get(META_KEY)
    if raw_meta is None:
        raise PatchFormatError(p, "not an rws patch (no 'rws' metadata); is it a checkpoint?")
    manifest = loads_strict(raw_meta, p, "the 'rws' metadata")
    check_manifest(p, manifest)
    keys: dict[str, dict[str, str]] = {n: {} for n in manifest["tensors"]}
    for key in file:
        name, _, suffix = key.partition(SEP)
        if name not in keys:
            raise PatchFormatError(p, f"stored tensor {key!r} is not in the manifest")
        keys[name][suffix] = key
    parts = {n: StoredParts(file, k) for n, k in keys.items()}
    if manifest["format"] >= 3:
        manifest = _expand(p, manifest, parts)
    return manifest, parts


def _expand(path: str, m: dict[str, Any], parts: Mapping[str, StoredParts]) -> dict[str, Any]:
    """A format-3 manifest with its tensor table in the format-1 layout."""
    tensors = {}
    for name, e in m["tensors"].items():
        codec = e.get("c", m.get("codec"))
        if "s" in e:
            shape = list(e["s"])
        else:
            main = "" if "" in parts[name] else "q"
            if main not in parts[name]:
                raise PatchFormatError(path, f"tensor {name!r}: no shape and no stored tensor")
            shape = list(parts[name].shape(main))
        params: dict[str, Any] = {}
        bs = e.get("b", m.get("blocksize"))
        if CODECS.get(codec).blockwise and bs is not None:
            params["blocksize"] = bs
        params.update(e.get("p", {}))
        params["rel_error"] = e.get("e", 0.0)
        entry = {"shape": shape, "dtype": e.get("t", m.get("dtype")), "codec": codec,
                 "params": params, "delta_l2": e.get("d", 0.0), "base_l2": e.get("w", 0.0),
                 "base_sha256": e.get("f")}  # fmt: skip
        if e.get("fixed"):
            entry["fixed"] = True
        tensors[name] = entry
    return {**m, "tensors": tensors}


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
    if not _is_number(scale):
        raise PatchFormatError(path, "'scale' is not a number")
    tensors = manifest.get("tensors")
    if not isinstance(tensors, dict):
        raise PatchFormatError(path, "the manifest has no 'tensors' table")
    if version >= 3:
        _check_defaults(path, manifest)
    for name, info in tensors.items():
        if not isinstance(info, dict):
            raise PatchFormatError(path, f"tensor {name!r}: manifest entry is not an object")
        if version >= 3:
            _check_entry(path, name, info, manifest)
            continue
        for key in ("shape", "dtype", "codec"):
            if key not in info:
                raise PatchFormatError(path, f"tensor {name!r}: manifest entry lacks {key!r}")
        if "fixed" in info and (not isinstance(info["fixed"], bool) or version < 2):
            raise PatchFormatError(path, f"tensor {name!r}: 'fixed' needs format 2 and true/false")
        _check_shape(path, name, info["shape"])
        _check_codec(path, name, info["codec"])
        sha = info.get("base_sha256")
        if sha is not None and not is_fingerprint(sha):
            raise PatchFormatError(path, f"tensor {name!r}: malformed base_sha256 {sha!r}")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_shape(path: str, name: str, shape: Any) -> None:
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise PatchFormatError(path, f"tensor {name!r}: malformed shape {shape!r}")


def _check_codec(path: str, name: str, codec: Any) -> None:
    if not isinstance(codec, str) or codec not in CODECS:
        raise PatchFormatError(path, f"tensor {name!r}: unknown codec {codec!r}")


def _check_defaults(path: str, m: Mapping[str, Any]) -> None:
    for key in ("dtype", "codec"):
        if key in m and not isinstance(m[key], str):
            raise PatchFormatError(path, f"the manifest's {key!r} is not a string")
    bs = m.get("blocksize")
    if bs is not None and (type(bs) is not int or bs <= 0):
        raise PatchFormatError(path, f"the manifest's 'blocksize' {bs!r} is not a positive integer")


def _check_entry(path: str, name: str, e: Mapping[str, Any], m: Mapping[str, Any]) -> None:
    """One format-3 tensor entry: known keys of the right types."""
    known = {"s", "t", "c", "b", "p", "e", "d", "w", "f", "fixed"}
    stray = sorted(set(e) - known)
    if stray:
        raise PatchFormatError(path, f"tensor {name!r}: unknown manifest keys {stray}")
    if "s" in e:
        _check_shape(path, name, e["s"])
    _check_codec(path, name, e.get("c", m.get("codec")))
    if not isinstance(e.get("t", m.get("dtype")), str):
        raise PatchFormatError(path, f"tensor {name!r}: no dtype")
    bs = e.get("b")
    if bs is not None and (type(bs) is not int or bs <= 0):
        raise PatchFormatError(path, f"tensor {name!r}: malformed block size {bs!r}")
    if not all(_is_number(e[k]) for k in ("e", "d", "w") if k in e):
        raise PatchFormatError(path, f"tensor {name!r}: a norm or error is not a number")
    if not isinstance(e.get("p", {}), dict):
        raise PatchFormatError(path, f"tensor {name!r}: 'p' is not an object")
    if "f" in e and not is_fingerprint(e["f"]):
        raise PatchFormatError(path, f"tensor {name!r}: malformed fingerprint {e['f']!r}")
    if "fixed" in e and not isinstance(e["fixed"], bool):
        raise PatchFormatError(path, f"tensor {name!r}: 'fixed' is not true/false")


def read_applied(metadata: Mapping[str, str], path: str) -> list[dict[str, Any]]:
    """The stack of patches recorded in a checkpoint's metadata (newest last)."""
    raw = metadata.get(APPLIED_KEY)
    if raw is None:
        return []
    stack = loads_strict(raw, path, f"the {APPLIED_KEY!r} metadata")
    if not isinstance(stack, list) or not all(isinstance(e, dict) for e in stack):
        raise PatchFormatError(path, f"the {APPLIED_KEY!r} metadata is not a list of objects")
    return stack


def applied_metadata(metadata: Mapping[str, str], stack: list[dict[str, Any]]) -> dict[str, str]:
    """Checkpoint metadata with the applied stack replaced (dropped when empty)."""
    out = {k: v for k, v in metadata.items() if k != APPLIED_KEY}
    if stack:
        out[APPLIED_KEY] = json.dumps(stack)
    return out
