"""Severity tables (severity 1 → 5) of CIFAR-10-C, ImageNet-C and the ``imagecorruptions`` package.

Values are the published ones of ``make_cifar_c.py`` (32×32 inputs) and ``make_imagenet_c.py``
(224×224 inputs) of hendrycks/robustness (Hendrycks & Dietterich, ICLR 2019). Parameters given in
pixels (blur radii, elastic displacements) are used as published, not rescaled to other image sizes.
``IMAGECORRUPTIONS`` is the ImageNet table as the ``imagecorruptions`` 1.1.2 package (bethgelab,
used for COCO-C and other detection/segmentation sets) changed it: its own elastic rows, and
kernel variants (:data:`~rws.robustness.corruptions.registry.VARIANTS`) for elastic_transform
(no affine step), pixelate (NEAREST upsampling) and snow. Each row's meaning is documented at
the kernel that reads it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from rws.errors import UsageError

Table = Literal["cifar", "imagenet", "imagecorruptions"]


def _zoom_factors(stop: float, step: float) -> tuple[float, ...]:
    # the reference's ``np.arange(1, stop, step)``: float rounding decides the last factor
    return tuple(float(z) for z in np.arange(1, stop, step))


_S = 32  # the CIFAR elastic table is written as fractions of the 32-pixel image side
_I = 244  # the ImageNet elastic table multiplies by 244 (the reference's own typo for 224), kept

CIFAR: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": tuple(_zoom_factors(stop, 0.01) for stop in (1.06, 1.11, 1.16, 1.21, 1.26)),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "elastic_transform": (
        (_S * 0, _S * 0, _S * 0.08),
        (_S * 0.05, _S * 0.2, _S * 0.07),
        (_S * 0.08, _S * 0.06, _S * 0.06),
        (_S * 0.1, _S * 0.04, _S * 0.05),
        (_S * 0.1, _S * 0.03, _S * 0.03),
    ),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}

IMAGENET: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    "zoom_blur": (
        _zoom_factors(1.11, 0.01),
        _zoom_factors(1.16, 0.01),
        _zoom_factors(1.21, 0.02),
        _zoom_factors(1.26, 0.02),
        _zoom_factors(1.31, 0.03),
    ),
    "snow": (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "elastic_transform": (
        (_I * 2, _I * 0.7, _I * 0.1),
        (_I * 2, _I * 0.08, _I * 0.2),
        (_I * 0.05, _I * 0.01, _I * 0.02),
        (_I * 0.07, _I * 0.01, _I * 0.02),
        (_I * 0.12, _I * 0.01, _I * 0.02),
    ),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "spatter": (
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
}

# imagecorruptions: elastic ``(α, σ / side, amplitude / height)``, no affine step (see the kernel)
IMAGECORRUPTIONS: dict[str, tuple[Any, ...]] = {
    **IMAGENET,
    "elastic_transform": tuple((250 * a, 0.01, 0.005) for a in (0.05, 0.065, 0.085, 0.1, 0.12)),
}

TABLES: dict[str, dict[str, tuple[Any, ...]]] = {
    "cifar": CIFAR,
    "imagenet": IMAGENET,
    "imagecorruptions": IMAGECORRUPTIONS,
}

# what each table reproduces, as reports name it
TABLE_LABELS: dict[str, str] = {
    "cifar": "cifar (make_cifar_c.py)",
    "imagenet": "imagenet (make_imagenet_c.py)",
    "imagecorruptions": "imagecorruptions (imagecorruptions 1.1.2)",
}

_REFERENCE_DATA = {
    "cifar": "CIFAR-10-C",
    "imagenet": "ImageNet-C",
    "imagecorruptions": "data made with the imagecorruptions package",
}


def reference_data(label: str | None) -> str:
    """What numbers of a report whose ``settings["table"]`` is ``label`` compare with
    (``"CIFAR-10-C"``, ``"ImageNet-C"``, …); reports without the field ran the CIFAR table."""
    key = (label or "cifar").split(" ", 1)[0]
    return _REFERENCE_DATA.get(key, "CIFAR-10-C")


AUTO_MAX_SIDE = 64  # ``params="auto"``: CIFAR when H and W are at most this, else ImageNet


def resolve_table(params: str, height: int, width: int) -> Table:
    """The table that ``params`` picks for an image size: ``"auto"`` is ``"cifar"`` up to
    :data:`AUTO_MAX_SIDE` pixels a side, else ``"imagenet"``; a table name is itself.

    Example:
        >>> resolve_table("auto", 32, 32), resolve_table("imagecorruptions", 32, 32)
        ('cifar', 'imagecorruptions')
    """
    if params == "auto":
        return "cifar" if max(height, width) <= AUTO_MAX_SIDE else "imagenet"
    if params not in TABLES:
        raise UsageError(
            f"params must be 'cifar', 'imagenet', 'imagecorruptions' or 'auto', not {params!r}"
        )
    return params  # type: ignore[return-value]


def table_label(table: str) -> str:
    """How reports name a table: ``"imagenet (make_imagenet_c.py)"`` …"""
    return TABLE_LABELS[table]


def severity_params(name: str, severity: int, table: Table) -> Any:
    """The parameter row of ``name`` at ``severity`` (1–5) in ``table``."""
    return TABLES[table][name][severity - 1]
