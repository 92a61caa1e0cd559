"""CIFAR-10 / CIFAR-100 from their "python version" folders, read locally (no download).

Layouts (as released by A. Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html):

- CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1`` … ``data_batch_5``, ``test_batch``,
  ``batches.meta``; each batch a dict with ``data`` uint8 (10000, 3072) and ``labels``.
- CIFAR-100 (``cifar-100-python``): ``train``, ``test``, ``meta``; ``data`` plus ``fine_labels``
  (used here, 100 classes) and ``coarse_labels``.

Rows of ``data`` are 1024 red, 1024 green, then 1024 blue values of a 32×32 image, row-major.
The files are pickles, read with :func:`~rws.data._pickle.load_restricted_pickle` (no code runs).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rws.data._files import require_dir
from rws.data._pickle import load_restricted_pickle
from rws.data.types import ImageDataset, Split, images_to_tensor, stratified_holdout
from rws.errors import InputFileError, MalformedInputError, UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Layout:
    subdir: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str


_LAYOUTS = {
    10: _Layout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    100: _Layout("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names"),
}


def load_cifar(
    root: str | os.PathLike,
    num_classes: Literal[10, 100] = 10,
    *,
    size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImageDataset:
    """Read a CIFAR-10 or CIFAR-100 python-version folder into fixed train / val / test splits.

    Args:
        root: the folder holding the batch files, or its parent (``cifar-10-batches-py`` or
            ``cifar-100-python`` inside it is found).
        num_classes: 10 or 100.
        size: output image side; ``None`` keeps 32.
        val_fraction: share of every class of the training data held out as the validation split.
        seed: seed of the validation split (stratified; the same on every machine).

    Returns:
        The dataset; the official test batch is the test split.

    Raises:
        InputFileError: the folder or one of its files is missing.
        UnsafeInputError: a file is a pickle that would build anything but plain data.
        MalformedInputError: a file is not a valid CIFAR batch (the message names it).
    """
    if num_classes not in _LAYOUTS:
        raise UsageError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), not {val_fraction}")
    layout = _LAYOUTS[num_classes]
    folder = _find_folder(require_dir(root), layout, num_classes)
    parts = [_read_batch(folder / name, layout, num_classes) for name in layout.train]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(folder / layout.test, layout, num_classes)
    keep, held = stratified_holdout(train_y, val_fraction, seed=seed)
    logger.debug("CIFAR-%d from %s: %d train, %d val", num_classes, folder, len(keep), len(held))

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(images_to_tensor(x, size), torch.from_numpy(y.astype(np.int64)))

    return ImageDataset(
        f"cifar{num_classes}:{root}",
        split(train_x[keep], train_y[keep]),
        split(train_x[held], train_y[held]),
        split(test_x, test_y),
        num_classes=num_classes,
        classes=_read_names(folder / layout.meta, layout, num_classes),
    )


def load_cifar10(root: str | os.PathLike, **kwargs: Any) -> ImageDataset:
    """CIFAR-10 from ``root``; see :func:`load_cifar` for the options."""
    return load_cifar(root, 10, **kwargs)


def load_cifar100(root: str | os.PathLike, **kwargs: Any) -> ImageDataset:
    """CIFAR-100 (fine labels) from ``root``; see :func:`load_cifar` for the options."""
    return load_cifar(root, 100, **kwargs)


def _find_folder(root: Path, layout: _Layout, num_classes: int) -> Path:
    for folder in (root, root / layout.subdir):
        if (folder / layout.test).is_file():
            return folder
    expected = ", ".join((*layout.train, layout.test, layout.meta))
    raise InputFileError(
        root, f"no CIFAR-{num_classes} python-version files here (expected {expected})"
    )


def _as_str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedInputError(path, f"expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_batch(path: Path, layout: _Layout, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file → uint8 images ``(N, 32, 32, 3)`` and int64 labels ``(N,)``."""
    batch = _as_str_keys(load_restricted_pickle(path), path)
    for key in ("data", layout.label_key):
        if key not in batch:
            raise MalformedInputError(path, f"no {key!r} entry; not a CIFAR-{num_classes} batch")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        found = (
            f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        )
        raise MalformedInputError(path, f"'data' must be a uint8 (N, 3072) array, found {found}")
    if data.shape[1] != 3 * 32 * 32:
        raise MalformedInputError(path, f"'data' has shape {data.shape}, expected (N, 3072)")
    try:
        labels = np.asarray(batch[layout.label_key])
    except (TypeError, ValueError):
        labels = np.empty(0, dtype=object)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise MalformedInputError(path, f"{layout.label_key!r} must be a list of integers")
    if len(labels) != len(data):
        raise MalformedInputError(
            path, f"{len(data)} images but {len(labels)} {layout.label_key!r} entries"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise MalformedInputError(
            path, f"labels outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()})"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 3072) -> (N, 32, 32, 3)
    return images, labels.astype(np.int64)


def _read_names(path: Path, layout: _Layout, num_classes: int) -> tuple[str, ...]:
    """Class names from the meta file; ``()`` (with a warning) where it is absent."""
    if not path.is_file():
        logger.warning("%s: no meta file, class names unknown", path)
        return ()
    meta = _as_str_keys(load_restricted_pickle(path), path)
    names = meta.get(layout.names_key)
    if (
        not isinstance(names, list)
        or len(names) != num_classes
        or not all(isinstance(n, (bytes, str)) for n in names)
    ):
        raise MalformedInputError(
            path, f"{layout.names_key!r} must be a list of {num_classes} class names"
        )
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)
