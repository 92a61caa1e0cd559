"""The released CIFAR-10-C / CIFAR-100-C arrays (Hendrycks & Dietterich 2019), read lazily.

A folder holds ``<corruption>.npy``, uint8 ``(5·n, 32, 32, 3)`` RGB, severity-major (rows
``0 … n-1`` severity 1, …, ``4n … 5n-1`` severity 5; ``n = 10000`` in the release) and
``labels.npy`` ``(5·n,)``. Arrays are memory-mapped with ``allow_pickle=False``; the header is
checked before any data is read, and only the requested severity's rows are copied.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from rws.data._files import open_input, require_dir
from rws.data.imagenet_c import load_imagenet_c
from rws.data.severity import check_severity
from rws.data.types import Split, images_to_tensor
from rws.errors import InputFileError, MalformedInputError, UnsafeInputError, UsageError

SEVERITIES = 5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


def cifar_c_corruptions(root: str | os.PathLike) -> list[str]:
    """Names of the corruption arrays in a CIFAR-10-C / CIFAR-100-C folder, sorted."""
    folder = require_dir(root)
    return sorted(p.stem for p in folder.glob("*.npy") if p.stem != "labels")


def load_cifar_c(
    root: str | os.PathLike, corruption: str, severity: int, *, size: int | None = None
) -> Split:
    """One corruption at one severity from the released ``.npy`` arrays (or, where ``root`` has
    ImageNet-C's ``<corruption>/<severity>/<class>/<image>`` layout, from its image files: see
    :mod:`rws.data.imagenet_c`).

    Args:
        root: the folder (e.g. ``CIFAR-10-C``) holding ``<corruption>.npy`` and ``labels.npy``.
        corruption: e.g. ``"fog"``, ``"gaussian_noise"``.
        severity: 1 … 5.
        size: output image side; ``None`` keeps the stored size.

    Returns:
        The ``n`` images of that severity, float32 ``(n, 3, S, S)`` in [0, 1], with their labels.

    Raises:
        UsageError: a severity outside 1 … 5, or a corruption name that is not a plain name.
        InputFileError: the folder or an array is missing (the message lists what is there).
        UnsafeInputError: an array of Python objects (a pickle), which is never loaded.
        MalformedInputError: not a ``.npy`` file, truncated, or the wrong dtype or shape.
    """
    severity = check_severity(severity)
    if not _NAME.fullmatch(corruption) or corruption == "labels":
        raise UsageError(f"{corruption!r} is not a corruption name (e.g. 'fog', 'gaussian_noise')")
    folder = require_dir(root)
    if (folder / corruption).is_dir() and size is None:  # ImageNet-C's layout of image files
        return load_imagenet_c(folder, corruption, severity)
    path = folder / f"{corruption}.npy"
    if not path.is_file():
        found = ", ".join(cifar_c_corruptions(folder)) or "none"
        raise InputFileError(path, f"no such corruption array (found: {found})")
    images = _open_npy(path)
    labels = _open_npy(folder / "labels.npy")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise MalformedInputError(
            path, f"expected uint8 (N, H, W, 3) images, found {images.dtype} {images.shape}"
        )
    total = images.shape[0]
    if total == 0 or total % SEVERITIES:
        raise MalformedInputError(path, f"{total} images is not {SEVERITIES} equal severity blocks")
    if labels.shape != (total,) or labels.dtype.kind not in "iu":
        raise MalformedInputError(
            folder / "labels.npy",
            f"expected {total} integer labels to match {path.name}, "
            f"found {labels.dtype} {labels.shape}",
        )
    n = total // SEVERITIES
    rows = slice((severity - 1) * n, severity * n)  # severity-major blocks
    y = np.asarray(labels[rows]).astype(np.int64)
    if y.min() < 0:
        raise MalformedInputError(folder / "labels.npy", "negative labels")
    return Split(images_to_tensor(images[rows], size), torch.from_numpy(y))


def _open_npy(path: Path) -> np.ndarray:
    """Memory-map a ``.npy`` file after checking its header and length; never unpickles."""
    with open_input(path) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, OSError, SyntaxError, TypeError) as exc:
            raise MalformedInputError(path, f"not a .npy array ({exc})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise UnsafeInputError(path, "holds Python objects (a pickle); it was not loaded")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise MalformedInputError(
            path, f"truncated: {actual} bytes, the header promises {expected} ({shape} {dtype})"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MalformedInputError(path, f"cannot be memory-mapped ({exc})") from None
