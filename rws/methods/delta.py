"""``delta``: tuned − base on the selected tensors (task-vector style)."""

from __future__ import annotations

from typing import Any

import torch

from rws.io.checkpoint import Checkpoint
from rws.methods.registry import DeltaFn, NoOptions, register_method
from rws.patching.arith import exact_delta


@register_method("delta", kind="delta", summary="tuned − base (task-vector style)")
def prepare_delta(
    base: Checkpoint, tuned: Checkpoint, options: NoOptions
) -> tuple[DeltaFn, dict[str, Any]]:
    """tuned − base in the compute dtype of the base tensor (:func:`~rws.patching.arith.exact_delta`).

    No refinement is applied: the subtraction is exact wherever the two values are within a
    factor of two of each other (Sterbenz's lemma), and there applying the delta reproduces
    ``tuned`` bit for bit; elsewhere the delta is the correctly rounded difference, and applying
    it may miss ``tuned`` by the roundings of the subtraction and of the addition.
    """

    def delta_of(name: str) -> torch.Tensor:
        return exact_delta(base.get(name), tuned.get(name))

    return delta_of, {}
