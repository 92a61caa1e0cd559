"""``rws.apply`` with ``scale="auto"``: an existing patch applied at the α chosen on validation
data under a clean-accuracy budget (:mod:`rws.recipes.operating_point`)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from torch import nn

from rws.errors import UsageError
from rws.patching.ops import PatchArg, PatchReport
from rws.patching.ops import apply as apply_patches
from rws.patching.patch import Patch
from rws.recipes.extract import search_settings
from rws.recipes.operating_point import search_operating_point
from rws.recipes.validation import validation_split
from rws.runtime.device import on_device

__all__ = ["apply"]


def apply(
    target: nn.Module | MutableMapping[str, torch.Tensor],
    *patches: PatchArg,
    scale: float | str = 1.0,
    data: Any = None,
    device: str = "auto",
    progress: bool = False,
    search: Mapping[str, Any] | None = None,
    **options: Any,
) -> PatchReport:
    """Add patches in place (:func:`rws.patching.ops.apply`); ``scale="auto"`` first chooses the
    scale of one patch on ``data``'s validation split.

    Args:
        target: a module or state dict (``auto``: a module, the model that is measured).
        patches: ``Patch`` or ``(Patch, α)``; ``auto`` takes exactly one ``Patch``.
        scale: a number, or ``"auto"``: the α (times the patch's own scale, unless that scale is
            the blind default of an extraction without a search: then of the full delta)
            maximising the criterion (default: mean accuracy over the patch's corruptions) with
            clean accuracy within ``max_clean_drop`` points (default 1) of the unpatched model's.
        data: (auto) a dataset spec, an ``(x, y)`` pair or a DataLoader.
        device, progress: (auto) where the search evaluates; a progress bar.
        search: (auto) keywords of :func:`rws.recipes.extract.search_settings` (``corruptions``,
            ``max_clean_drop`` …); given directly as keywords they are taken as such too.
        options: ``force``, ``clamp_var``, ``undo``.

    Returns:
        The apply report; with ``auto`` its ``operating_point`` holds the chosen α and the curve.

    Example:
        >>> rep = rws.apply(model, fog_sig, scale="auto", data=(x_val, y_val))  # doctest: +SKIP
        >>> rep.operating_point["alpha"]  # doctest: +SKIP
    """
    search = dict(search or {})
    for key in set(options) - {"force", "clamp_var", "undo"}:
        search[key] = options.pop(key)
    if scale != "auto":
        if data is not None or search:
            raise UsageError(f"data and search settings go with scale='auto' ({sorted(search)})")
        return apply_patches(target, *patches, scale=scale, **options)  # type: ignore[arg-type]
    if not isinstance(target, nn.Module):
        raise UsageError("scale='auto' measures the model: give an nn.Module, not a state dict")
    if len(patches) != 1 or not isinstance(patches[0], Patch):
        raise UsageError(
            "scale='auto' takes one patch; for several use rws.compose(…, search=True)"
        )
    patch = patches[0]
    if patch.provenance.get("alpha_default"):  # a blind default, not a choice: search the full δ
        patch = patch.replace(scale=1.0)
    split = validation_split(data)
    settings = search_settings(patch, **search)
    with on_device(target, device):
        op = search_operating_point(target, patch, split, settings, progress=progress)
    report = apply_patches(target, patch, scale=op.alpha, **options)
    report.operating_point = op.to_dict()
    return report
