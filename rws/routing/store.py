"""A router as one plain file: safetensors arrays, settings and library references as JSON.

The file holds the detector's arrays (float64, so predictions come back bit for bit) and, in
the safetensors header's ``__metadata__["rws_router"]``, a JSON object: ``format`` (1), the
mode, threshold, classes, input shape, detector settings, fitting settings and the library
(``corruption``, ``reference``, ``scale``, ``fingerprint`` of each signature). A reference is an
``hf://`` address, or a path written relative to the router file's folder, so a router pushed
to the Hub next to its signatures finds them; a signature held only in memory is written beside
the router as ``<router stem>.<corruption>.safetensors``. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rws.errors import IntegrityError, MalformedInputError
from rws.io.atomic import atomic_output
from rws.io.hub_fetch import resolve_path
from rws.io.hub_ref import is_hub_ref
from rws.patching.patch import load
from rws.routing.detector import Detector

__all__ = ["FORMAT", "load_parts", "save_router"]

FORMAT = 1
KEY = "rws_router"


def _reference(entry_ref: str, patch: Any, corruption: str, path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    if entry_ref and is_hub_ref(entry_ref):
        return entry_ref
    if entry_ref and os.path.isfile(entry_ref):
        return os.path.relpath(os.path.abspath(entry_ref), folder)
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"{stem}.{corruption}.safetensors"
    patch.save(os.path.join(folder, name))
    return name


def save_router(router: Any, path: str | os.PathLike) -> None:
    """Write ``router`` (a :class:`rws.routing.router.Router`) to ``path`` (atomically)."""
    path = os.fspath(path)
    meta = {"format": FORMAT, **router.describe()}
    for item, e in zip(meta["library"], router.entries, strict=True):
        item["reference"] = _reference(e.reference, e.patch, e.corruption, path)
    arrays = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
              for k, v in router.detector.arrays().items()}  # fmt: skip
    with atomic_output(path) as tmp:
        save_file(arrays, tmp, metadata={KEY: json.dumps(meta)})


def read_router(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The settings and arrays of a router file.

    Raises:
        MalformedInputError: not a safetensors file, or no router settings in its header.
    """
    local = os.fspath(resolve_path(path))
    try:
        with safe_open(local, framework="pt") as fh:
            meta = (fh.metadata() or {}).get(KEY)
            arrays = {k: fh.get_tensor(k).numpy() for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise MalformedInputError(path, f"not a router file ({err})") from None
    if meta is None:
        raise MalformedInputError(path, "a safetensors file without router settings "
                                        "(write one with `rws route` or Router.save)")  # fmt: skip
    try:
        settings = json.loads(meta)
        ok = isinstance(settings, dict) and settings.get("format") == FORMAT
    except json.JSONDecodeError:
        ok = False
    if not ok:
        raise MalformedInputError(path, f"router settings are not format {FORMAT} JSON")
    return settings, arrays


def load_parts(path: str | os.PathLike) -> dict[str, Any]:
    """What a saved router holds: ``library`` (``(patch, corruption)`` pairs read from their
    references), ``scales``, ``detector``, ``mode``, ``threshold``, ``input_shape``, ``fit``.

    Raises:
        MalformedInputError: a malformed file. IntegrityError: a signature whose content changed
            since the router was saved.
    """
    settings, arrays = read_router(path)
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    library, scales = [], {}
    for item in settings["library"]:
        ref = str(item["reference"])
        where = ref if is_hub_ref(ref) or os.path.isabs(ref) else os.path.join(folder, ref)
        patch = load(where)
        if patch.fingerprint() != item["fingerprint"]:
            raise IntegrityError(
                f"{where}: signature for {item['corruption']} changed since the router was saved "
                f"(fingerprint {patch.fingerprint()[:12]}… != {str(item['fingerprint'])[:12]}…)"
            )
        library.append((patch, str(item["corruption"])))
        scales[str(item["corruption"])] = float(item["scale"])
    detector = Detector.from_parts(settings["detector"], arrays)
    return {"library": library, "scales": scales, "detector": detector, "mode": settings["mode"],
            "threshold": settings["threshold"], "input_shape": settings["input_shape"],
            "fit": dict(settings.get("fit") or {})}  # fmt: skip
