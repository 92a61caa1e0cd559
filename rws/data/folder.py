"""Image folders in the ImageFolder layout: one sub-folder per class, images read with Pillow.

Two layouts are read:

- ``DIR/<class>/<image>``: one pool, split into train / val / test (stratified, seeded);
- ``DIR/train/<class>/…`` and ``DIR/test/<class>/…`` (optionally ``DIR/val/<class>/…``;
  without it the validation split is carved from ``train``). Class names come from ``train``.

Class names are the sub-folder names, sorted; label ``i`` is the ``i``-th name. Hidden entries and
files whose extension is not an image format are skipped. Every image is converted to RGB and
resized to ``size × size`` (bilinear), so the whole set is held in memory: meant for small sets.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rws.data._files import require_dir
from rws.data.types import ImageDataset, Split, images_to_tensor, stratified_holdout
from rws.errors import InputFileError, MalformedInputError, UnsafeInputError, UsageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)


def load_image_folder(
    root: str | os.PathLike,
    *,
    size: int = 32,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageDataset:
    """Read an ImageFolder-style directory into fixed train / val / test splits.

    Args:
        root: the folder (see the module docstring for the two layouts).
        size: side of the square images returned.
        val_fraction: share of every class held out for validation (when there is no ``val``).
        test_fraction: share of every class held out for testing (single-pool layout only).
        seed: seed of the held-out splits.

    Returns:
        The dataset, images float32 ``(N, 3, size, size)`` in [0, 1].

    Raises:
        InputFileError: the folder is missing or holds no class folders.
        MalformedInputError: an image cannot be decoded, or a split names an unknown class.
        UnsafeInputError: an image so large that Pillow flags it as a decompression bomb.
    """
    if size < 1:
        raise UsageError(f"image size must be positive, not {size}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise UsageError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
    folder = require_dir(root)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        classes = _class_names(folder / "train")
        train_x, train_y = _read_split(folder / "train", classes, size)
        test = _read_split(folder / "test", classes, size)
        if (folder / "val").is_dir():
            val = _read_split(folder / "val", classes, size)
        else:
            keep, held = stratified_holdout(train_y, val_fraction, seed=seed)
            val = train_x[held], train_y[held]
            train_x, train_y = train_x[keep], train_y[keep]
    else:
        classes = _class_names(folder)
        x, y = _read_split(folder, classes, size)
        rest, test_idx = stratified_holdout(y, test_fraction, seed=seed)
        keep, held = stratified_holdout(y[rest], val_fraction / (1.0 - test_fraction), seed=seed)
        test = x[test_idx], y[test_idx]
        val = x[rest[held]], y[rest[held]]
        train_x, train_y = x[rest[keep]], y[rest[keep]]

    def split(xy: tuple[np.ndarray, np.ndarray]) -> Split:
        return Split(images_to_tensor(xy[0]), torch.from_numpy(xy[1]))

    return ImageDataset(
        f"folder:{root}",
        split((train_x, train_y)),
        split(val),
        split(test),
        num_classes=len(classes),
        classes=classes,
    )


def _class_names(folder: Path) -> tuple[str, ...]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise InputFileError(folder, "no class sub-folders (expected DIR/<class>/<image>)")
    return tuple(names)


def _read_split(folder: Path, classes: tuple[str, ...], size: int) -> tuple[np.ndarray, np.ndarray]:
    """All images under ``folder/<class>/`` → uint8 ``(N, size, size, 3)`` and int64 labels."""
    extra = set(_class_names(folder)) - set(classes)
    if extra:
        raise MalformedInputError(
            folder, f"class folders {sorted(extra)} are not among the training classes"
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for path in sorted(class_dir.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                logger.debug("skipping %s (not an image file)", path)
                continue
            images.append(read_image(path, size))
            labels.append(label)
    if not images:
        raise InputFileError(folder, "no image files in its class folders")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def read_image(path: Path, size: int | None) -> np.ndarray:
    """One image as uint8 RGB ``(H, W, 3)``, resized to ``size × size`` (bilinear) unless None."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if size is not None:
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise UnsafeInputError(path, f"image too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MalformedInputError(path, f"not a readable image ({exc})") from None
