"""Interpolation patches with α given or chosen: ``W(α) = base + α·(tuned − base)``.

α is given, or chosen on validation data (:mod:`rws.recipes.alpha`): the best clean / corrupted /
robust accuracy or a weighted sum, optionally under a robustness constraint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rws.io.checkpoint import Source
from rws.methods.extract import extract
from rws.patching.patch import Patch
from rws.recipes.alpha import DEFAULT_GRID, DEFAULT_REFINE, AlphaSettings, parse_criterion
from rws.recipes.operating_point import model_for, search_operating_point, with_operating_point
from rws.recipes.order import extraction_order
from rws.recipes.validation import validation_split
from rws.robustness.corruptions import CORRUPTIONS
from rws.runtime.device import on_device


def interpolate(
    base: Source,
    tuned: Source,
    *,
    alpha: float | str | None = "auto",
    data: Any = None,
    arch: str | None = None,
    criterion: str | Mapping[str, float] = "clean",
    grid: Sequence[float] | None = None,
    refine: float = DEFAULT_REFINE,
    max_clean_drop: float | None = None,
    max_robust_drop: float | None = None,
    corruptions: Sequence[str] | None = None,
    severity: tuple[int, int] = (1, 5),
    attack_eps: float | str = 8 / 255,
    attack_steps: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    **extract_options: Any,
) -> Patch:
    """A patch that turns ``base`` into ``base + α·(tuned − base)``.

    Args:
        base, tuned: ``nn.Module``s, state dicts or checkpoint paths of one architecture.
        alpha: a number, None (1), or ``"auto"`` to choose it on ``data``'s validation split.
        data: (auto) a dataset spec such as ``"digits"``, an ``(x, y)`` pair or a DataLoader.
        arch: (when ``base`` is not an ``nn.Module``) the architecture: its forward pass gives the
            depth order ``shallow``/``energy`` count in; (auto) the search builds it.
        criterion: (auto) ``clean``, ``corrupted``, ``robust`` or a weighted sum such as
            ``clean=1,corrupted=1`` (:func:`rws.recipes.alpha.parse_criterion`).
        grid, refine: (auto) α values (default 0, 0.1, …, 1) and the refinement step.
        max_clean_drop, max_robust_drop: (auto) largest allowed fall of clean / PGD accuracy below
            the base's, in accuracy points; None: no budget.
        corruptions, severity: (auto) the corrupted validation images; default: the 15 benchmark
            corruptions at severities 1–5, one cell per image, when the criterion uses
            ``corrupted``; named corruptions get every image at every severity.
        attack_eps, attack_steps: (auto) PGD of the robust metric; measured when the criterion
            or the budget needs it.
        batch_size, seed, device, progress: (auto) evaluation batch, seeds, where, a progress bar.
        extract_options: passed to :func:`rws.methods.extract.extract` (codec, include, shallow,
            name, tags …).

    Returns:
        The patch (kind ``interpolation``, ``scale = α``); with ``auto`` its provenance holds the
        α curve (``alpha_curve``) and the search (``operating_point``).

    Example:
        >>> p = rws.interpolate(at_model, tuned_model, alpha="auto", data="digits",
        ...                     criterion="clean", max_robust_drop=1.0)  # doctest: +SKIP
    """
    extract_options["order"] = extraction_order(extract_options.get("order"), base, tuned, arch)
    if alpha != "auto":
        patch = extract(base, tuned, method="interpolation", alpha=alpha, **extract_options)
        return patch.replace(provenance={**patch.provenance, "operating_point": None})
    split = validation_split(data)
    patch = extract(base, tuned, method="interpolation", **extract_options)
    crit = parse_criterion(criterion)
    copy = "full" if corruptions is not None else "cycled"
    if corruptions is None:
        corruptions = CORRUPTIONS if crit.get("corrupted") else ()
    needs_attack = bool(crit.get("robust")) or max_robust_drop is not None
    settings = AlphaSettings(
        grid=tuple(grid) if grid is not None else DEFAULT_GRID, refine=refine, criterion=crit,
        max_clean_drop=max_clean_drop, max_robust_drop=max_robust_drop,
        corruptions=tuple(corruptions), severity=severity, attack_eps=attack_eps,
        attack_steps=attack_steps if needs_attack else 0, batch_size=batch_size, seed=seed,
        copy=copy,
    )  # fmt: skip
    model = model_for(base, arch, split)
    with on_device(model, device):
        op = search_operating_point(model, patch, split, settings, progress=progress)
    out = with_operating_point(patch, op)
    return out.replace(provenance={**out.provenance, "alpha_curve": op.curve.to_dict()})
