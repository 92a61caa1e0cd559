"""Datasets: the built-in digits, local CIFAR-10/100 and image folders, and the CIFAR-10-C arrays.

Every source returns float32 images ``(N, 3, H, W)`` in [0, 1] and int64 labels, in fixed
train / validation / test splits.
"""

from __future__ import annotations

from pathlib import Path

from rws.data.cifar import load_cifar, load_cifar10, load_cifar100
from rws.data.cifar_c import cifar_c_corruptions, load_cifar_c
from rws.data.digits import load_digits
from rws.data.folder import load_image_folder
from rws.data.imagenet_c import imagenet_c_corruptions, load_imagenet_c, load_imagenet_c_clean
from rws.data.types import ImageDataset, Split
from rws.errors import InputFileError, UnknownNameError, UsageError

DATASET_SPECS = ("digits", "cifar10:DIR", "cifar100:DIR", "folder:DIR")
RELEASED_SPECS = ("cifar10c:DIR", "cifar100c:DIR", "imagenet-c:DIR")


def load_dataset(spec: str, *, size: int | None = None) -> ImageDataset:
    """Load the dataset a spec names.

    Args:
        spec: ``digits`` (built in), ``cifar10:DIR``, ``cifar100:DIR`` (python-version folders) or
            ``folder:DIR`` (one sub-folder per class).
        size: image side; ``None`` means 32 (digits, folders) or the stored size (CIFAR).

    Returns:
        The dataset with fixed train / val / test splits.

    Raises:
        UnknownNameError: an unknown source (the message lists the specs).
        UsageError: a source given without its directory, or ``digits`` given one.

    Example:
        >>> data = load_dataset("digits")
    """
    kind, sep, arg = spec.partition(":")
    if kind == "digits":
        if sep:
            raise UsageError(f"dataset {spec!r}: 'digits' is built in and takes no directory")
        return load_digits(32 if size is None else size)
    if kind in ("cifar10", "cifar100", "folder"):
        if not arg:
            raise UsageError(f"dataset {spec!r}: give a directory, as in {kind}:path/to/{kind}")
        if kind == "folder":
            return load_image_folder(arg, size=32 if size is None else size)
        return load_cifar(arg, 10 if kind == "cifar10" else 100, size=size)
    raise UnknownNameError("dataset", spec, list(DATASET_SPECS))


__all__ = [
    "DATASET_SPECS",
    "RELEASED_SPECS",
    "ImageDataset",
    "Split",
    "cifar_c_corruptions",
    "imagenet_c_corruptions",
    "load_cifar",
    "load_cifar10",
    "load_cifar100",
    "load_cifar_c",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_imagenet_c",
    "load_imagenet_c_clean",
    "resolve_data",
]


_C_FOLDERS = {"cifar10c": (10, "cifar-10-batches-py"), "cifar100c": (100, "cifar-100-python")}


def resolve_data(spec: str, *, size: int | None = None) -> tuple[ImageDataset, str | None]:
    """A dataset spec → (dataset, folder of released corruptions or None).

    Besides every :func:`rws.data.load_dataset` spec, ``cifar10c:DIR`` / ``cifar100c:DIR`` name a
    CIFAR-10-C / CIFAR-100-C folder (the clean test set is read from ``cifar-10-batches-py`` /
    ``cifar-100-python`` inside or next to it) and ``imagenet-c:DIR`` an ImageNet-C-style folder
    (``DIR/<corruption>/<severity>/<class>/<image>`` and the clean images in ``DIR/clean``; a
    test split only, see :mod:`rws.data.imagenet_c`).

    Args:
        spec: the dataset spec.
        size: image side (folders and CIFAR resize to it; see :func:`load_dataset`).

    Raises:
        UsageError, UnknownNameError: a bad spec. InputFileError: the clean set is missing.
    """
    kind, _, arg = spec.partition(":")
    if kind == "imagenet-c":
        if not arg:
            raise UsageError(
                f"dataset {spec!r}: give the folder, as in imagenet-c:path/to/ImageNet-C"
            )
        return load_imagenet_c_clean(arg, size=size), arg
    if kind not in _C_FOLDERS:
        if kind not in {s.partition(":")[0] for s in DATASET_SPECS}:
            raise UnknownNameError("dataset", spec, [*DATASET_SPECS, *RELEASED_SPECS])
        return load_dataset(spec, size=size), None
    if not arg:
        raise UsageError(f"dataset {spec!r}: give the folder, as in {kind}:path/to/CIFAR-10-C")
    if size is not None:
        raise UsageError(f"dataset {spec!r}: released arrays are compared at their stored size; "
                         "drop --img-size")  # fmt: skip
    num_classes, clean_name = _C_FOLDERS[kind]
    folder = Path(arg)
    for cand in (folder / clean_name, folder.parent / clean_name):
        if cand.is_dir():
            return load_cifar(cand, num_classes), str(folder)
    raise InputFileError(
        folder, f"the clean test set is needed too: put {clean_name} inside or next to it"
    )
