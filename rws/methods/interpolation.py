"""``interpolation``: WiSE-FT-style weight interpolation ``W(α) = base + α·(tuned − base)``.

The patch stores ``tuned − base`` (exact in fp32); its ``scale`` is α, which
:func:`rws.recipes.interpolation.interpolate` sets (given, or chosen on validation data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from rws.errors import UsageError
from rws.io.checkpoint import Checkpoint
from rws.methods.registry import DeltaFn, register_method
from rws.patching.arith import exact_delta


def _exact(base: Checkpoint, tuned: Checkpoint, method: str, options: Mapping[str, Any]) -> DeltaFn:
    if options:
        raise UsageError(f"method {method!r} takes no options (got {', '.join(options)})")

    def delta_of(name: str) -> torch.Tensor:
        return exact_delta(base.get(name), tuned.get(name))

    return delta_of


@register_method(
    "interpolation",
    kind="interpolation",
    summary="tuned − base, applied at scale α (WiSE-FT-style interpolation)",
    url="https://arxiv.org/abs/2109.01903",
)
def prepare_interpolation(
    base: Checkpoint, tuned: Checkpoint, **options: Any
) -> tuple[DeltaFn, dict[str, Any]]:
    """tuned − base (exact); :func:`rws.recipes.interpolation.interpolate` sets the patch's scale α."""
    return _exact(base, tuned, "interpolation", options), {}


@register_method(
    "rift",
    kind="rift",
    summary="RiFT: fine-tuned − adversarially trained, one module, applied at scale α",
    url="https://arxiv.org/abs/2308.02533",
)
def prepare_rift(
    base: Checkpoint, tuned: Checkpoint, **options: Any
) -> tuple[DeltaFn, dict[str, Any]]:
    """fine-tuned − AT (exact); :func:`rws.recipes.rift.rift` selects the module and sets α."""
    return _exact(base, tuned, "rift", options), {}
