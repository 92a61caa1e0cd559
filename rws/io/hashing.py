"""sha256 fingerprints: tensors, state dicts, files, JSON-able values (the one home for hashing)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from rws.io.safetensors_layout import tensor_bytes

logger = logging.getLogger(__name__)


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw little-endian bytes (the fingerprint stored in patches)."""
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def state_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """One sha256 over names, dtypes, shapes and bytes of a state dict, in its order."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    logger.info("%s: sha256 %s", os.fspath(path), h.hexdigest())
    return h.hexdigest()


def files_sha256(paths: Iterable[str | os.PathLike[str]]) -> str:
    """One file's sha256, or for several (a sharded checkpoint) the sha256 of their sha256s in
    sorted path order."""
    files = sorted(os.fspath(p) for p in paths)
    if len(files) == 1:
        return file_sha256(files[0])
    return text_sha256("".join(file_sha256(f) for f in files))


def text_sha256(text: str) -> str:
    """sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode()).hexdigest()


def json_sha256(value: Any) -> str:
    """sha256 of a JSON-able value, keys sorted (non-JSON values by ``str``)."""
    return text_sha256(json.dumps(value, sort_keys=True, default=str))
