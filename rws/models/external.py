"""Models from optional packages: ``timm:NAME`` and ``torchvision:NAME``.

Both are wrapped to take images in [0, 1]: a ``normalize`` submodule with non-persistent buffers
and a forward pre-hook, so the state dict keeps the package's own names (its checkpoints load
unchanged) and ``.to(device)`` moves mean/std along. Neither package is a dependency of rws:
install the extra (``pip install "rws-patch[timm]"``) or the package itself.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from rws.errors import UsageError
from rws.models.layers import Normalize
from rws.models.normalization import NAMED_STATS

logger = logging.getLogger(__name__)


def _normalize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: normalise the first input with the module's ``normalize`` layer."""
    return (module.normalize(args[0]), *args[1:])


def _wrap(
    spec: str, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]
) -> nn.Module:
    if hasattr(model, "normalize"):
        raise UsageError(f"model {spec!r}: the model already has a 'normalize' attribute")
    model.add_module("normalize", Normalize(mean, std))
    model.register_forward_pre_hook(_normalize_input)
    logger.debug("built %s (mean %s, std %s)", spec, mean, std)
    return model


def _missing(spec: str, package: str) -> UsageError:
    return UsageError(
        f"model {spec!r}: {package} is not installed; install it (pip install {package}) or use a "
        "registered model (rws list models)"
    )


def timm_model(
    spec: str, name: str, num_classes: int, img_size: int | None = None, **kwargs: Any
) -> nn.Module:
    """``timm.create_model(name, num_classes=…, img_size=…, **kwargs)`` taking [0, 1] inputs
    normalised with the model's pretrained config (ImageNet statistics where it has none)."""
    try:
        import timm
    except ImportError:
        raise _missing(spec, "timm") from None
    if not timm.is_model(name):
        raise UsageError(f"model {spec!r}: timm has no model {name!r}; see timm.list_models()")
    if img_size is not None:
        kwargs["img_size"] = img_size  # ViT-style models build their position table from it
    try:
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise UsageError(f"model {spec!r}: {exc}") from None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = NAMED_STATS["imagenet"]
    return _wrap(spec, model, tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std)))


def torchvision_model(
    spec: str, name: str, num_classes: int, img_size: int | None = None, **kwargs: Any
) -> nn.Module:
    """``torchvision.models.get_model(name, num_classes=…, **kwargs)`` (random init; load weights
    with ``--weights``) taking [0, 1] inputs normalised with ImageNet statistics.

    ``img_size`` is passed as ``image_size`` to the models that take one (ViT, Swin V1 does not).
    """
    try:
        from torchvision import models as tv_models
    except ImportError:
        raise _missing(spec, "torchvision") from None
    available = set(tv_models.list_models())
    if name not in available:
        raise UsageError(
            f"model {spec!r}: torchvision has no model {name!r}; see "
            "torchvision.models.list_models()"
        )
    if img_size is not None:
        kwargs["image_size"] = img_size
    try:
        model = tv_models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise UsageError(f"model {spec!r}: {exc}") from None
    return _wrap(spec, model, *NAMED_STATS["imagenet"])
