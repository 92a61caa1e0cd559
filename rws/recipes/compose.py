"""Robustness-aware composition: per-patch coefficients chosen on validation data.

``Σk ck·Pk`` is measured on the validation split: clean accuracy and the mean accuracy over every
corruption the patches are for (each patch's tags or recorded training, or the caller's list). The
search is deterministic:

1. the starting points: nothing (all ``ck = 0``), the uniform ``ck = 1/|K|``, and each patch alone
   at its best coefficient on the grid (a line search, the others at 0);
2. coordinate ascent from the best of those: each coefficient in turn over the grid, the others
   fixed, keeping a change only when it scores strictly better within the clean budget; rounds
   until one changes nothing (at most ``rounds``);
3. a local refinement: each coefficient ± half a grid step, once.

Ties go to the smaller sum of coefficients (the smaller change). The uniform and single-patch
points are kept in the result, so the choice is reported against them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from rws.data.types import Split
from rws.errors import UsageError
from rws.patching.patch import Patch
from rws.patching.patch import compose as compose_patches
from rws.recipes.alpha import AlphaPoint, AlphaSettings, feasible
from rws.recipes.operating_point import model_for, patch_corruptions
from rws.recipes.validation import Measurement, Probe, validation_split
from rws.runtime.device import on_device
from rws.runtime.modes import eval_mode
from rws.runtime.progress import progress_bar

DEFAULT_COEFFICIENTS = (0.0, 0.25, 0.5, 0.75, 1.0)

__all__ = [
    "DEFAULT_COEFFICIENTS",
    "CompositionPoint",
    "CompositionSearch",
    "compose",
    "compose_at",
    "search_composition",
]


@dataclass(frozen=True)
class CompositionPoint:
    """Validation accuracies (fractions) of ``Σ ck·Pk``; ``per_corruption`` in search order."""

    coefficients: tuple[float, ...]
    clean: float
    corrupted: float
    per_corruption: tuple[float, ...]

    def as_alpha_point(self) -> AlphaPoint:
        """The point in :mod:`rws.recipes.alpha` terms (for the budget and the criterion)."""
        return AlphaPoint(sum(self.coefficients), self.clean, self.corrupted, math.nan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"coefficients": list(self.coefficients), "clean": self.clean,
                "corrupted": self.corrupted, "per_corruption": list(self.per_corruption)}  # fmt: skip


@dataclass
class CompositionSearch:
    """The chosen coefficients, the points compared with them, and every point measured."""

    chosen: CompositionPoint
    base: CompositionPoint
    uniform: CompositionPoint
    singles: list[CompositionPoint]
    points: list[CompositionPoint]
    corruptions: tuple[str, ...]
    rule: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def coefficients(self) -> tuple[float, ...]:
        """The chosen ``ck``, one per patch."""
        return self.chosen.coefficients

    @property
    def budget_met(self) -> bool:
        """Whether any measured non-zero combination met the clean budget."""
        drop = self.rule.get("max_clean_drop")
        b = self.base.as_alpha_point()
        return any(
            any(p.coefficients) and feasible(p.as_alpha_point(), b, drop, None) for p in self.points
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the composed patch's ``provenance["composition_search"]``)."""
        return {
            "coefficients": list(self.coefficients),
            "budget_met": self.budget_met,
            "corruptions": list(self.corruptions),
            "rule": self.rule,
            "data": self.data,
            "chosen": self.chosen.to_dict(),
            "base": self.base.to_dict(),
            "uniform": self.uniform.to_dict(),
            "singles": [p.to_dict() for p in self.singles],
            "points": [p.to_dict() for p in self.points],
        }


def search_composition(
    model: nn.Module,
    patches: Sequence[Patch],
    split: Split,
    settings: AlphaSettings,
    *,
    grid: Sequence[float] = DEFAULT_COEFFICIENTS,
    rounds: int = 4,
    probe: Probe | None = None,
    progress: bool = False,
) -> CompositionSearch:
    """Choose one coefficient per patch (see the module doc); the model is restored bit for bit.

    ``settings`` gives the criterion (default use: ``corrupted``), the clean budget
    (``max_clean_drop``, points), the corruptions and the validation copy; its α grid is unused.

    Raises:
        UsageError: fewer than two patches, an empty grid, bad settings.
    """
    if len(patches) < 2:
        raise UsageError("a composition search needs at least two patches")
    values = sorted({0.0, *(float(v) for v in grid)})
    if len(values) < 2:
        raise UsageError("the coefficient grid needs a value other than 0")
    with eval_mode(model), progress_bar("composition search", None, enabled=progress) as advance:
        pr = probe or settings.probe(model, split)
        cache: dict[tuple[float, ...], CompositionPoint] = {}

        def measure(c: tuple[float, ...]) -> CompositionPoint:
            c = tuple(round(v, 6) for v in c)
            if c not in cache:
                items = [(p, a) for p, a in zip(patches, c, strict=True) if a]
                cache[c] = _point(c, pr.measure(*items))
                advance()
            return cache[c]

        n = len(patches)
        base = measure((0.0,) * n)
        better = _better(base, settings)
        singles = [_line(measure, (0.0,) * n, k, values, better) for k in range(n)]
        uniform = measure((1.0 / n,) * n)
        start = [base, uniform, *singles]
        best = start[0]
        for p in start[1:]:
            best = p if better(p, best) else best
        best = _ascend(measure, best, values, better, rounds)
        half = (values[1] - values[0]) / 2
        for k in range(n):
            for d in (-half, half):
                c = list(best.coefficients)
                c[k] = max(0.0, c[k] + d)
                cand = measure(tuple(c))
                best = cand if better(cand, best) else best
    rule = {**settings.rule(), "coefficients": values, "rounds": rounds,
            "ties": "smaller sum of coefficients"}  # fmt: skip
    rule.pop("grid", None)
    data = {"n_examples": pr.n, "sha256": pr.fingerprint, "severity": list(settings.severity),
            "seed": settings.seed, "copy": settings.copy}  # fmt: skip
    return CompositionSearch(best, base, uniform, singles, list(cache.values()),
                             tuple(settings.corruptions), rule, data)  # fmt: skip


def _point(c: tuple[float, ...], m: Measurement) -> CompositionPoint:
    return CompositionPoint(c, m.clean, m.corrupted, m.per_corruption)


Better = Callable[[CompositionPoint, CompositionPoint], bool]


def _better(base: CompositionPoint, s: AlphaSettings) -> Better:
    """``better(a, b)``: ``a`` meets the budget and beats ``b`` (score, then smaller Σ ck)."""
    b = base.as_alpha_point()

    def key(p: CompositionPoint) -> tuple[float, float]:
        return (round(p.as_alpha_point().score(s.criterion), 9), -round(sum(p.coefficients), 9))

    def better(x: CompositionPoint, y: CompositionPoint) -> bool:
        ok = feasible(x.as_alpha_point(), b, s.max_clean_drop, None)
        return ok and key(x) > key(y)

    return better


def _line(
    measure: Callable[[tuple[float, ...]], CompositionPoint],
    start: tuple[float, ...],
    k: int,
    values: Sequence[float],
    better: Better,
) -> CompositionPoint:
    """The best point moving coefficient ``k`` over ``values`` from ``start``."""
    best = measure(start)
    for v in values:
        c = list(start)
        c[k] = v
        cand = measure(tuple(c))
        best = cand if better(cand, best) else best
    return best


def _ascend(
    measure: Callable[[tuple[float, ...]], CompositionPoint],
    best: CompositionPoint,
    values: Sequence[float],
    better: Better,
    rounds: int,
) -> CompositionPoint:
    for _ in range(rounds):
        before = best
        for k in range(len(best.coefficients)):
            best = _line(measure, best.coefficients, k, values, better)
        if best == before:
            break
    return best


def compose_at(patches: Sequence[Patch], search: CompositionSearch, **kw: Any) -> Patch:
    """The composed patch at the searched coefficients (zero ones left out), the search in its
    provenance."""
    items = [(p, c) for p, c in zip(patches, search.coefficients, strict=True) if c]
    if not items:  # nothing met the budget: an empty composition of the first patch at 0
        items = [(patches[0], 0.0)]
    out = compose_patches(items, **kw)
    return out.replace(provenance={**out.provenance, "composition_search": search.to_dict()})


def compose(
    patches: Sequence[Patch | tuple[Patch, float]],
    *,
    search: bool = False,
    model: nn.Module | str | None = None,
    arch: str | None = None,
    data: Any = None,
    corruptions: Sequence[str] | None = None,
    criterion: str = "corrupted",
    max_clean_drop: float | None = 1.0,
    grid: Sequence[float] = DEFAULT_COEFFICIENTS,
    severity: tuple[int, int] = (1, 5),
    batch_size: int = 256,
    seed: int = 0,
    copy: Literal["full", "cycled"] = "full",
    device: str = "auto",
    progress: bool = False,
    **compose_options: Any,
) -> Patch:
    """``Σ αk·Pk`` (:func:`rws.patching.patch.compose`) or, with ``search=True``, the coefficients
    chosen on ``data``'s validation split for ``model`` (see the module doc).

    Args:
        patches: patches (or ``(patch, α)`` pairs; with ``search`` the α are ignored and the
            searched coefficients multiply each patch's own scale).
        search: choose the coefficients; needs ``model`` and ``data``.
        model: (search) the model the composition patches: an ``nn.Module`` or a checkpoint file
            with ``arch``.
        data: (search) a dataset spec, an ``(x, y)`` pair or a DataLoader (validation split).
        corruptions: (search) default: the union of the patches' own corruptions (tags or
            recorded training).
        criterion, max_clean_drop: (search) what to maximise (default the mean accuracy over the
            corruptions) and the clean budget in accuracy points below the unpatched model.
        grid, severity, batch_size, seed, copy, device, progress: (search) coefficient grid,
            the corrupted validation copy (``copy="cycled"``: each image in one (corruption,
            severity) cell, not in every one), evaluation.
        compose_options: ``codec``, ``blocksize``, ``force``, ``name``, ``ties`` (TIES-style sign
            election instead of the sum), ``codec_map``, ``sparsify``, ``density``, ``seed``
            (the result's encoding, as in :func:`rws.patching.patch.compose`).

    Returns:
        The composed patch; with ``search`` its provenance holds ``composition_search`` (the
        coefficients, the uniform and single-patch points they were compared with, every point).

    Raises:
        UsageError: search keywords without ``search=True``; ``search`` without model or data, with
            fewer than two patches, or patches that name no corruption and no ``corruptions``.

    Example:
        >>> both = rws.compose([fog, noise, contrast], search=True, model=clean,
        ...                    data=(x_val, y_val), max_clean_drop=1.0)  # doctest: +SKIP
    """
    if not search:
        if model is not None or data is not None or corruptions is not None:
            raise UsageError("model, data and corruptions go with search=True")
        return compose_patches(patches, **compose_options)
    if model is None:
        raise UsageError("a composition search needs the model it patches (--base/--arch, model=…)")
    split = validation_split(data)
    plain = [p if isinstance(p, Patch) else p[0] for p in patches]
    found = list(corruptions) if corruptions is not None else _union(plain)
    settings = AlphaSettings(criterion=criterion, max_clean_drop=max_clean_drop,
                             max_robust_drop=None, corruptions=tuple(found), severity=severity,
                             attack_steps=0, batch_size=batch_size, seed=seed, copy=copy)  # fmt: skip
    net = model_for(model, arch, split)
    with on_device(net, device):
        res = search_composition(net, plain, split, settings, grid=grid, progress=progress)
    return compose_at(plain, res, **compose_options)


def _union(patches: Sequence[Patch]) -> list[str]:
    out: list[str] = []
    for p in patches:
        found = patch_corruptions(p)
        if not found:
            raise UsageError(
                f"{p.label}: names no corruption (tags or recorded training); give corruptions=[…] "
                "(--corruptions)"
            )
        out += [c for c in found if c not in out]
    return out
