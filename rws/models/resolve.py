"""Turn a model spec into a module: a registry name, ``module.path:factory`` or ``timm:NAME``."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from rws.errors import CheckpointError, UsageError
from rws.io.checkpoint import open_checkpoint
from rws.models.layers import CIFAR_MEAN, CIFAR_STD, Normalize
from rws.models.registry import create_model

logger = logging.getLogger(__name__)

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def resolve_model(spec: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build the model a spec names; every built-in model takes images in [0, 1].

    Args:
        spec: a registered name (``"resnet18"``, see ``list_models()``);
            ``"pkg.module:factory"``, a callable imported from the user's code and called as
            ``factory(num_classes=…, **kwargs)`` (it should normalise its own inputs); or
            ``"timm:NAME"``, a timm model (timm must be installed) wrapped to normalise [0, 1]
            inputs with its pretrained config's mean/std.
        num_classes: size of the output layer.
        **kwargs: passed on to the factory.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        UnknownNameError: for a plain name that is not registered (the message lists the choices).
        UsageError: for a factory that cannot be imported or called, a missing timm or timm model.

    Example:
        >>> model = resolve_model("resnet20", num_classes=10)
    """
    if spec.startswith("timm:"):
        return _timm_model(spec, spec[len("timm:") :], num_classes, **kwargs)
    if ":" in spec:
        return _user_model(spec, num_classes, **kwargs)
    return create_model(spec, num_classes=num_classes, **kwargs)


def _user_model(spec: str, num_classes: int, **kwargs: Any) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not _DOTTED.match(module_name) or not _DOTTED.match(attr):
        raise UsageError(
            f"model {spec!r}: expected a registered name, 'package.module:factory' or 'timm:NAME'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"model {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"model {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"model {spec!r}: {attr!r} is not callable")
    _check_accepts(spec, obj, "num_classes", *kwargs)
    model = obj(num_classes=num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"model {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    logger.debug("built user model %s (%s)", spec, type(model).__name__)
    return model


def _check_accepts(spec: str, factory: Callable[..., Any], *names: str) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        sig.bind_partial(**dict.fromkeys(names))
    except TypeError:
        raise UsageError(
            f"model {spec!r}: the factory must accept keyword arguments {', '.join(names)}"
        ) from None


def _normalize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: normalise the first input with the module's ``normalize`` layer."""
    return (module.normalize(args[0]), *args[1:])


def _timm_model(spec: str, name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UsageError(
            f"model {spec!r}: timm is not installed; install it (pip install timm) or use a "
            "registered model (rws list models)"
        ) from None
    if not timm.is_model(name):
        raise UsageError(f"model {spec!r}: timm has no model {name!r}; see timm.list_models()")
    model = timm.create_model(name, num_classes=num_classes, **kwargs)
    if hasattr(model, "normalize"):
        raise UsageError(f"model {spec!r}: the timm model already has a 'normalize' attribute")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", CIFAR_MEAN))
    std = tuple(cfg.get("std", CIFAR_STD))
    # Normalisation as a submodule with non-persistent buffers and a pre-hook: the state dict keeps
    # timm's own names, so timm checkpoints load unchanged, and `.to(device)` moves mean/std along.
    model.add_module("normalize", Normalize(mean, std))
    model.register_forward_pre_hook(_normalize_input)
    logger.debug("built timm model %s (mean %s, std %s)", name, mean, std)
    return model


def load_model(arch: str, weights: str | os.PathLike, num_classes: int) -> nn.Module:
    """Build ``arch`` and load ``weights`` (any checkpoint rws reads) into it, strictly, in eval mode.

    Raises:
        CheckpointError: the checkpoint's tensor names or shapes do not fit the architecture.
    """
    model = resolve_model(arch, num_classes=num_classes)
    ck = open_checkpoint(weights)
    state = {k: ck.get(k).clone() for k in ck}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:300]
        raise CheckpointError(ck.path, f"does not fit --arch {arch} ({detail})") from None
    return model.eval()
