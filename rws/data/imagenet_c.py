"""ImageNet-C's folder layout: ``DIR/<corruption>/<severity>/<class>/<image>`` beside a clean set.

The release stores every corrupted validation image as a file named like its clean original, in
its class folder. rws reads a cell (one corruption at one severity) in the clean set's order, so
image ``i`` of every cell is the corrupted copy of clean image ``i``; the clean images come from
``DIR/clean/<class>/<image>`` (e.g. a link to the ImageNet validation folder in class layout),
resized so that the shorter side is ``S·256/224`` and centre-cropped to ``S × S``, where ``S`` is
the cells' stored size (224 in the release). Everything is held in memory, one cell at a time:
meant for subsets (a few thousand images), not the whole 50,000-image set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rws.data._files import require_dir
from rws.data.folder import IMAGE_EXTENSIONS, read_image
from rws.data.severity import check_severity
from rws.data.types import ImageDataset, Split, images_to_tensor
from rws.errors import InputFileError, MalformedInputError, UsageError

CLEAN = "clean"


def is_imagenet_c(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds ``<corruption>/<1…5>/`` folders (the ImageNet-C layout)."""
    return bool(imagenet_c_corruptions(root)) if Path(root).is_dir() else False


def imagenet_c_corruptions(root: str | os.PathLike) -> list[str]:
    """Corruption folders of an ImageNet-C-style folder (those with a severity sub-folder), sorted."""
    folder = Path(root)
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and p.name != CLEAN and any((p / str(s)).is_dir() for s in range(1, 6))
    )


def _files(folder: Path) -> list[tuple[str, Path]]:
    """``(class/stem, path)`` of every image under ``folder/<class>/``, sorted."""
    items = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name[0] != "."):
        for path in sorted(class_dir.iterdir()):
            if path.name[0] != "." and path.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((f"{class_dir.name}/{path.stem}", path))
    if not items:
        raise InputFileError(folder, "no images in class sub-folders (expected <class>/<image>)")
    return items


def _cell_size(root: Path) -> int:
    for corruption in imagenet_c_corruptions(root):
        for s in range(1, 6):
            cell = root / corruption / str(s)
            if cell.is_dir():
                with Image.open(_files(cell)[0][1]) as im:
                    return int(min(im.size))
    raise InputFileError(root, "no <corruption>/<severity>/ folders (the ImageNet-C layout)")


def _center_crop(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        w, h = rgb.size
        scale = round(size * 256 / 224) / min(w, h)
        rgb = rgb.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         Image.Resampling.BILINEAR)  # fmt: skip
        left, top = (rgb.size[0] - size) // 2, (rgb.size[1] - size) // 2
        return np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_imagenet_c_clean(root: str | os.PathLike, *, size: int | None = None) -> ImageDataset:
    """The clean images of an ImageNet-C-style folder as a test-only dataset.

    Train and validation splits are empty: the layout holds evaluation data only.

    Raises:
        InputFileError: no ``clean`` folder, or no cells to take the size from.
        UsageError: ``size`` differs from the cells' stored size.
    """
    folder = require_dir(root)
    stored = _cell_size(folder)
    if size is not None and size != stored:
        raise UsageError(f"{folder}: the ImageNet-C cells are {stored}×{stored}; --img-size {size} "
                         "would compare differently sized images")  # fmt: skip
    clean = folder / CLEAN
    if not clean.is_dir():
        raise InputFileError(clean, "missing: put the clean images there as <class>/<image>")
    files = _files(clean)
    classes = tuple(sorted({key.split("/")[0] for key, _ in files}))
    images = np.stack([_center_crop(p, stored) for _, p in files])
    labels = torch.tensor([classes.index(key.split("/")[0]) for key, _ in files])
    empty = Split(torch.empty(0, 3, stored, stored), torch.empty(0, dtype=torch.int64))
    test = Split(images_to_tensor(images), labels)
    return ImageDataset(f"imagenet-c:{root}", empty, empty, test, len(classes), classes)


def load_imagenet_c(root: str | os.PathLike, corruption: str, severity: int) -> Split:
    """One cell, in the clean set's order (matched by class folder and file stem).

    Raises:
        InputFileError: the cell is missing (the message lists the corruptions found).
        MalformedInputError: the cell's images are not the clean set's, or differ in size.
    """
    severity = check_severity(severity)
    folder = require_dir(root)
    cell = folder / corruption / str(severity)
    if not cell.is_dir():
        found = ", ".join(imagenet_c_corruptions(folder)) or "none"
        raise InputFileError(cell, f"no such ImageNet-C cell (corruptions found: {found})")
    clean = _files(folder / CLEAN)
    have = dict(_files(cell))
    missing = [key for key, _ in clean if key not in have]
    if missing:
        raise MalformedInputError(
            cell, f"{len(missing)} clean images have no corrupted copy (first: {missing[0]})"
        )
    classes = sorted({key.split("/")[0] for key, _ in clean})
    stored = _cell_size(folder)
    images = []
    for key, _ in clean:
        img = read_image(have[key], None)
        if img.shape[:2] != (stored, stored):
            raise MalformedInputError(have[key], f"is {img.shape[1]}×{img.shape[0]}, the cells "
                                      f"are {stored}×{stored}")  # fmt: skip
        images.append(img)
    labels = torch.tensor([classes.index(key.split("/")[0]) for key, _ in clean])
    return Split(images_to_tensor(np.stack(images)), labels)
