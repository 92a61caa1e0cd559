"""Model registry: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from rws.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(
    name: str, *, summary: str = "", url: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory ``f(num_classes=10, **kw) -> nn.Module`` under ``name``."""
    return MODELS.register(name, summary=summary, url=url)


def create_model(name: str, *, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a registered model; inputs are images in [0, 1], normalisation is inside the model.

    Example:
        >>> model = create_model("small-cnn", num_classes=10)
    """
    return MODELS.get(name)(num_classes=num_classes, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching a glob."""
    return MODELS.names(pattern)
