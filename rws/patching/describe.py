"""Describe a patch or a checkpoint as a JSON-able dict (what ``rws inspect`` renders)."""

from __future__ import annotations

import os
from typing import Any

from rws.errors import RwsError
from rws.io.checkpoint import open_checkpoint
from rws.io.safetensors_read import read_header
from rws.patching.format import META_KEY, read_applied
from rws.patching.patch import Patch
from rws.patching.selection import depth_order


def is_patch(path: str | os.PathLike) -> bool:
    """True if the file is a safetensors file carrying rws patch metadata."""
    try:
        header, _ = read_header(path)
    except RwsError:
        return False
    return META_KEY in (header.get("__metadata__") or {})


def describe_patch(patch: Patch) -> dict[str, Any]:
    """Sizes, compression ratios, per-tensor codecs and errors, norms and metadata of a patch."""
    file_bytes = os.path.getsize(patch.source) if patch.source else None
    stored = patch.nbytes()
    size = file_bytes or stored
    touched_fp32 = 4 * patch.numel()
    base_numel = patch.base.get("numel")
    tensors = []
    for name, t in patch.tensors.items():
        tensors.append(
            {
                "name": name,
                "shape": list(t.shape),
                "dtype": t.dtype,
                "codec": t.encoded.codec,
                "blocksize": t.encoded.params.get("blocksize"),
                "bytes": t.encoded.nbytes(),
                "rel_error": t.encoded.params.get("rel_error"),
                "delta_l2": t.delta_l2,
                "relative_delta": t.delta_l2 / t.base_l2 if t.base_l2 else None,
                "fixed": t.fixed,
            }
        )
    return {
        "type": "patch",
        "path": patch.source or None,
        "kind": patch.kind,
        "name": patch.name,
        "scale": patch.scale,
        "description": patch.description,
        "tags": patch.tags,
        "fingerprint": patch.fingerprint(),
        "file_bytes": file_bytes,
        "stored_bytes": stored,
        "tensors_stored": len(patch.tensors),
        "tensors_skipped_zero": len(patch.skipped),
        "tensors_fixed": sum(t.fixed for t in patch.tensors.values()),
        "numel": patch.numel(),
        "ratio_vs_touched_fp32": touched_fp32 / size if size else None,
        "ratio_vs_model_fp32": 4 * base_numel / size if base_numel and size else None,
        "base": patch.base,
        "provenance": patch.provenance,
        "extra": patch.extra,
        "tensors": tensors,
    }


def describe_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors, dtypes, sizes, the applied-patch stack of a checkpoint, and what was unwrapped to
    reach its weights (a training pickle's ``state_dict`` key, a ``module.`` prefix …)."""
    ck = open_checkpoint(path)
    tensors = []
    total = 0
    for name in depth_order(ck.keys(), ck.dtype):
        shape, dtype = ck.shape(name), ck.dtype(name)
        n = 1
        for s in shape:
            n *= s
        total += n
        tensors.append({"name": name, "shape": list(shape), "dtype": str(dtype).split(".")[-1]})
    meta = dict(ck.metadata)
    stack = read_applied(meta, ck.path)
    unwrapped = list(ck.unwrapped)
    ck.close()
    return {
        "type": "checkpoint",
        "path": os.fspath(path),
        "file_bytes": os.path.getsize(path) if os.path.isfile(path) else None,
        "tensors_total": len(tensors),
        "numel": total,
        "applied": stack,
        "unwrapped": unwrapped,  # what was taken off to reach the weights (wrapper keys, prefixes)
        "metadata": {k: v for k, v in meta.items() if not k.startswith("rws.")},
        "tensors": tensors,
    }


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Describe whatever ``path`` is: a patch file or a checkpoint (local or ``hf://``)."""
    from rws.io.hub_fetch import resolve_path

    path = resolve_path(path)
    if os.path.isfile(path) and is_patch(path):
        return describe_patch(Patch.load(path))
    return describe_checkpoint(path)
