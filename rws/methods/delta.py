"""``delta``: tuned − base on the selected tensors (task-vector style)."""

from __future__ import annotations

from typing import Any

import torch

from rws.io.checkpoint import Checkpoint
from rws.methods.registry import DeltaFn, register_method
from rws.patching.arith import exact_delta


@register_method("delta", kind="delta", summary="tuned − base (task-vector style)")
def prepare_delta(
    base: Checkpoint, tuned: Checkpoint, **options: Any
) -> tuple[DeltaFn, dict[str, Any]]:
    """tuned − base, nudged so that applying the fp32 delta reproduces ``tuned`` bit for bit."""
    if options:
        from rws.errors import UsageError

        raise UsageError(f"method 'delta' takes no options (got {', '.join(options)})")

    def delta_of(name: str) -> torch.Tensor:
        return exact_delta(base.get(name), tuned.get(name))

    return delta_of, {}
