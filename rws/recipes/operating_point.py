"""The operating point of a patch: its scale α, and optionally how many of its layers, chosen on
validation data under a clean-accuracy budget.

``layers=None`` keeps the patch's layers and searches α (:func:`rws.recipes.alpha.alpha_curve`).
``layers="auto"`` searches the first K layers jointly with α: K runs over 1, 2, 4, … and every
layer; each K gets the α grid, the best (K, α) under the budgets wins (ties: the smaller α, then
the fewer layers), and the refinement runs around the winner's α on its K. A signature's
robustness can sit in a few shallow layers for one corruption and need every layer for another,
so the choice is measured, not assumed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from torch import nn

from rws.data.types import Split
from rws.errors import UsageError
from rws.io.checkpoint import Source, open_checkpoint
from rws.models import load_model
from rws.patching.patch import Patch
from rws.patching.selection import Layer, group_layers
from rws.recipes.alpha import AlphaCurve, AlphaPoint, AlphaSettings, search_alpha
from rws.recipes.validation import Probe
from rws.runtime.modes import eval_mode
from rws.runtime.progress import progress_bar

Layers = Literal["auto"] | int | None

__all__ = [
    "OperatingPoint",
    "first_layers",
    "layer_candidates",
    "model_for",
    "patch_corruptions",
    "patch_layers",
    "search_operating_point",
    "with_operating_point",
]


def patch_layers(patch: Patch) -> list[Layer]:
    """The patch's tensors grouped into layers, shallowest first (as ``--shallow`` counts them)."""
    names = patch.names()
    return group_layers(names, lambda n: tuple(patch.tensors[n].shape))


def first_layers(patch: Patch, k: int) -> Patch:
    """The patch restricted to its first ``k`` layers (selection recorded in the provenance)."""
    layers = patch_layers(patch)[:k]
    keep = {n for la in layers for n in la.tensors}
    prov = dict(patch.provenance)
    selection = {**prov.get("selection", {}), "shallow": k, "layers": [la.name for la in layers]}
    return patch.replace(
        tensors={n: t for n, t in patch.tensors.items() if n in keep},
        provenance={**prov, "selection": selection},
    )


def layer_candidates(n_layers: int) -> list[int]:
    """1, 2, 4, … below ``n_layers``, then ``n_layers`` itself."""
    out, k = [], 1
    while k < n_layers:
        out.append(k)
        k *= 2
    return [*out, n_layers]


@dataclass
class OperatingPoint:
    """The chosen α and layer count, the curve of the chosen layer count, and the best point of
    every layer count tried."""

    alpha: float
    layers: int | None  # first K layers of the patch; None: all of them (not searched)
    curve: AlphaCurve
    rule: dict[str, Any]
    data: dict[str, Any]
    by_layers: dict[int, AlphaPoint] = field(default_factory=dict)

    @property
    def budget_met(self) -> bool:
        """Whether some α > 0 met the budgets (else the operating point is α = 0)."""
        return self.alpha != 0.0 or self.curve.budget_met

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a patch's ``provenance["operating_point"]``)."""
        return {
            "alpha": self.alpha,
            "layers": self.layers,
            "budget_met": self.budget_met,
            "rule": self.rule,
            "data": self.data,
            "curve": self.curve.to_dict(),
            "by_layers": {str(k): vars(p) for k, p in self.by_layers.items()},
        }


def search_operating_point(
    model: nn.Module,
    patch: Patch,
    split: Split,
    settings: AlphaSettings,
    *,
    layers: Layers = None,
    probe: Probe | None = None,
    progress: bool = False,
) -> OperatingPoint:
    """Choose α (and with ``layers="auto"`` the number of shallow layers) for ``patch`` on
    ``model``, measured on ``split`` (restored bit for bit after every measurement).

    Raises:
        UsageError: bad settings, a split that does not fit the model, a bad ``layers``.
    """
    n_layers = len(patch_layers(patch))
    if layers not in (None, "auto") and not (
        isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1
    ):
        raise UsageError(f"layers must be None, 'auto' or a count ≥ 1, got {layers!r}")
    ks = layer_candidates(n_layers) if layers == "auto" else [layers or n_layers]
    with eval_mode(model):
        pr = probe or settings.probe(model, split)
        subs = {k: first_layers(patch, k) if k < n_layers else patch for k in ks}
        cache: dict[tuple[int, float], AlphaPoint] = {}

        def measure(k: int, a: float) -> AlphaPoint:
            key = (k if a else 0, a)  # α = 0 is the same model for every K
            if key not in cache:
                cache[key] = AlphaPoint.of(a, pr.measure(*([(subs[k], a)] if a else [])))
            return cache[key]

        coarse = settings if len(ks) == 1 else _no_refine(settings)
        curves = {}
        with progress_bar("layers × α search", len(ks), enabled=progress and len(ks) > 1) as adv:
            for k in ks:
                curves[k] = search_alpha(lambda a, k=k: measure(k, a), coarse, pr.n,
                                         progress=progress and len(ks) == 1)  # fmt: skip
                adv()
        best = _best_layers(curves, settings)
        curve = curves[best]
        if len(ks) > 1:  # refine α on the chosen layer count only
            curve = search_alpha(lambda a: measure(best, a), settings, pr.n)
    chosen_k = best if len(ks) > 1 or layers is not None else None
    data = {"n_examples": pr.n, "sha256": pr.fingerprint, "corruptions": list(settings.corruptions),
            "severity": list(settings.severity), "seed": settings.seed, "copy": settings.copy}  # fmt: skip
    return OperatingPoint(curve.chosen.alpha, chosen_k, curve, settings.rule(), data,
                          {k: c.chosen for k, c in curves.items()})  # fmt: skip


def _no_refine(s: AlphaSettings) -> AlphaSettings:
    return replace(s, refine=0.0)


def _best_layers(curves: Mapping[int, AlphaCurve], s: AlphaSettings) -> int:
    """The layer count whose chosen point scores best; ties → smaller α, then fewer layers."""
    ranked = sorted(curves, key=lambda k: (-round(curves[k].chosen.score(s.criterion), 9),
                                           curves[k].chosen.alpha, k))  # fmt: skip
    return ranked[0]


def with_operating_point(patch: Patch, op: OperatingPoint) -> Patch:
    """``patch`` at the chosen operating point: its first K layers, ``scale = α × patch.scale``,
    the search in ``provenance["operating_point"]``."""
    k = op.layers
    out = first_layers(patch, k) if k is not None and k < len(patch_layers(patch)) else patch
    return out.replace(
        scale=op.alpha * patch.scale,
        provenance={**out.provenance, "alpha": op.alpha, "operating_point": op.to_dict()},
    )


def patch_corruptions(patch: Patch) -> list[str]:
    """The corruptions a patch is for, from its tags (``corruption=…``) or the robust model's
    recorded training (``rws finetune``); empty when neither says."""
    tag = patch.tags.get("corruption")
    if tag:
        return [c for c in tag.split(",") if c]
    trained = patch.provenance.get("trained") or {}
    found = trained.get("corruptions") if isinstance(trained, Mapping) else None
    return [str(c) for c in found] if isinstance(found, Sequence) else []


def model_for(base: Source, arch: str | None, split: Split) -> nn.Module:
    """``base`` itself when it is a module; else ``arch`` built and loaded from it.

    Raises:
        UsageError: a checkpoint base without ``arch``.
    """
    if isinstance(base, nn.Module):
        return base
    if arch is None:
        raise UsageError("an operating-point search on checkpoint files needs the architecture "
                         "(--arch / arch=…)")  # fmt: skip
    if not isinstance(base, str | os.PathLike):
        raise UsageError(
            "an operating-point search needs the base as a module or a checkpoint file"
        )
    return load_model(arch, base, _num_classes(base, split))


def _num_classes(base: str | os.PathLike, split: Split) -> int:
    """The output size: the last 2-D tensor's rows (the classifier), else the labels' range."""
    ck = open_checkpoint(base)
    heads = [ck.shape(n) for n in ck if len(ck.shape(n)) == 2]
    return int(heads[-1][0]) if heads else int(split.y.max()) + 1
