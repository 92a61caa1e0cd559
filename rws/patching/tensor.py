"""``TensorDelta``: one patched tensor, and the weights of *fixed* tensors.

A tensor is **fixed** (manifest entry ``"fixed": true``) when its delta replaces the base tensor at
full weight whatever the patch's scale: ``--bn replace-all`` stores every BatchNorm tensor so, as
``R − Wc`` with ``R`` the robust models' average, and the reference replaces BN tensors whatever
α. Only the sign of the effective α counts (:func:`fixed_weights`): α > 0 replaces, α = 0 leaves
the tensor alone (so α = 0 is still "no change" for an operating-point search) and α < 0 takes the
replacement back off. Several patches fixing one tensor apply the **mean** of their replacements
(the reference's average over robust models), so composing one patch gives that patch again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rws.errors import UsageError
from rws.patching import codecs
from rws.patching._readonly import thaw


@dataclass(frozen=True)
class TensorDelta:
    """One patched tensor: its encoded delta and the facts about the base it was taken against.

    Attributes:
        name: the tensor's name in the base state dict.
        shape: the base tensor's shape.
        dtype: the base tensor's dtype, e.g. ``"float32"``.
        encoded: the stored delta (:class:`~rws.patching.codecs.Encoded`).
        base_sha256: sha256 of the base tensor the delta was taken against, if known.
        delta_l2, base_l2: ‖δ‖ and ‖w‖.
        fixed: applied at full weight whatever the scale (see the module doc).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # the base tensor's dtype, e.g. "float32"
    encoded: codecs.Encoded
    base_sha256: str | None = None
    delta_l2: float = 0.0
    base_l2: float = 0.0
    fixed: bool = False

    @property
    def numel(self) -> int:
        """Elements of the tensor."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    def decode(self) -> torch.Tensor:
        """The float32 delta (unscaled)."""
        return codecs.decode(self.name, self.encoded, self.shape)

    def manifest(self) -> dict[str, Any]:
        """This tensor's entry in the file's manifest (a fresh, mutable dict); ``fixed`` only
        when set, so that entries of unfixed tensors are what format 1 wrote."""
        entry = {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "codec": self.encoded.codec,
            "params": thaw(self.encoded.params),
            "numel": self.numel,
            "delta_l2": self.delta_l2,
            "base_l2": self.base_l2,
            "base_sha256": self.base_sha256,
        }
        if self.fixed:
            entry["fixed"] = True
        return entry


def fixed_weights(alphas: Sequence[float]) -> list[float]:
    """The weights of one fixed tensor's parts, given their effective αs: ``sign(α)/n`` over the
    ``n`` parts with α ≠ 0 (the mean of their replacements), 0 for the others.

    Example:
        >>> fixed_weights([0.3, 2.0, 0.0])
        [0.5, 0.5, 0.0]
    """
    n = sum(1 for a in alphas if a != 0)
    return [((a > 0) - (a < 0)) / n if n else 0.0 for a in alphas]


def part_weights(name: str, fixed: Sequence[bool], alphas: Sequence[float]) -> list[float]:
    """The weights of the parts touching tensor ``name``: their αs, or :func:`fixed_weights`
    when the tensor is fixed.

    Raises:
        UsageError: the tensor is fixed in some parts and scaled in others.
    """
    if not any(fixed):
        return list(alphas)
    if not all(fixed):
        raise UsageError(
            f"tensor {name!r} is fixed (a replacement, e.g. --bn replace-all) in one patch and "
            "scaled in another; apply or compose them separately"
        )
    return fixed_weights(alphas)
