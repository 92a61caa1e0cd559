"""Model registry: ``register_model``, ``get_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from rws.registry import Registry

ModelFn = Callable[..., nn.Module]

MODELS: Registry[ModelFn] = Registry("model")


def register_model(name: str, *, summary: str = "", url: str = "") -> Callable[[ModelFn], ModelFn]:
    """Register a factory ``f(num_classes=10, **kw) -> nn.Module`` under ``name``."""
    return MODELS.register(name, summary=summary, url=url)


def get_model(name: str) -> ModelFn:
    """The constructor registered under ``name``.

    Raises:
        UnknownNameError: no model of that name (the message lists the choices).

    Example:
        >>> get_model("small-cnn")(num_classes=3).fc.out_features
        3
    """
    return MODELS.get(name)


def create_model(name: str, *, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a registered model; inputs are images in [0, 1], normalisation is inside the model.

    Raises:
        UnknownNameError: no model of that name (the message lists the choices).

    Example:
        >>> model = create_model("small-cnn", num_classes=10)
    """
    return get_model(name)(num_classes=num_classes, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching a glob, in registration order.

    Example:
        >>> list_models("resnet2*")
        ['resnet20']
    """
    return MODELS.names(pattern)
