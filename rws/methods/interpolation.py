"""``interpolation``: WiSE-FT-style weight interpolation ``W(α) = base + α·(tuned − base)``.

The patch stores ``tuned − base`` (exact in fp32, as ``delta``) and its ``scale`` is α: a number
given here, or chosen on validation data by :func:`rws.recipes.interpolation.interpolate`
(``alpha="auto"``), which is where the search lives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from rws.errors import UsageError
from rws.io.checkpoint import Checkpoint
from rws.methods.registry import DeltaFn, NoOptions, register_method
from rws.patching.arith import exact_delta


@dataclass(frozen=True)
class InterpolationOptions(NoOptions):
    """Options of ``interpolation``.

    Attributes:
        alpha: the scale α: a number (text such as ``"0.5"`` is parsed), ``"auto"`` (chosen on
            data by :func:`rws.recipes.interpolation.interpolate`) or None (scale 1; the
            command line requires it).

    Raises:
        UsageError: ``alpha`` is neither a finite number nor ``"auto"``.
    """

    labels: ClassVar[dict[str, str]] = {"alpha": "--alpha A|auto"}
    required: ClassVar[tuple[str, ...]] = ("alpha",)

    alpha: float | Literal["auto"] | None = None

    def __post_init__(self) -> None:
        a = self.alpha
        if a is None or a == "auto":
            return
        if isinstance(a, str):
            try:
                a = float(a)
            except ValueError:
                a = math.nan
        if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a):
            raise UsageError(f"--alpha {self.alpha!r}: give a number or auto")
        object.__setattr__(self, "alpha", float(a))

    @property
    def scale(self) -> float:
        """α when it is a number, else 1."""
        return self.alpha if isinstance(self.alpha, float) else 1.0


@register_method(
    "interpolation",
    kind="interpolation",
    options=InterpolationOptions,
    summary="tuned − base, applied at scale α (WiSE-FT-style interpolation)",
    url="https://arxiv.org/abs/2109.01903",
)
def prepare_interpolation(
    base: Checkpoint, tuned: Checkpoint, options: InterpolationOptions
) -> tuple[DeltaFn, dict[str, Any]]:
    """tuned − base (as ``delta``); a numeric α becomes the patch's scale and an ``alpha`` fact.

    Raises:
        UsageError: ``alpha="auto"``: choosing α needs data, so it is
            :func:`rws.recipes.interpolation.interpolate`'s job.
    """
    if options.alpha == "auto":
        raise UsageError(
            "alpha='auto' is chosen on validation data: use rws.interpolate(…, data=…) "
            "(rws extract --alpha auto --data …)"
        )

    def delta_of(name: str) -> torch.Tensor:
        return exact_delta(base.get(name), tuned.get(name))

    return delta_of, ({} if options.alpha is None else {"alpha": options.alpha})
