"""Interpolation patches with α given or chosen: ``W(α) = base + α·(tuned − base)``.

α is given, or chosen on validation data (:mod:`rws.recipes.alpha`): the best clean / corrupted /
robust accuracy or a weighted sum, optionally under a robustness constraint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from rws.data import load_dataset
from rws.errors import UsageError
from rws.io.checkpoint import Source
from rws.methods.extract import extract
from rws.models import load_model
from rws.patching.patch import Patch
from rws.recipes.alpha import AlphaCurve, AlphaSettings, alpha_curve, parse_criterion
from rws.robustness.corruptions import CORRUPTIONS
from rws.runtime.device import on_device


def interpolate(
    base: Source,
    tuned: Source,
    *,
    alpha: float | str = "auto",
    data: Any = None,
    arch: str | None = None,
    criterion: str | Mapping[str, float] = "clean",
    grid: Sequence[float] | None = None,
    max_robust_drop: float | None = None,
    corruptions: Sequence[str] | None = None,
    severity: tuple[int, int] = (1, 5),
    attack_eps: float | str = 8 / 255,
    attack_steps: int = 10,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    **extract_options: Any,
) -> Patch:
    """A patch that turns ``base`` into ``base + α·(tuned − base)``.

    Args:
        base, tuned: ``nn.Module``s, state dicts or checkpoint paths of one architecture.
        alpha: a number, or ``"auto"`` to choose it on ``data``'s validation split.
        data: (auto) a dataset or spec such as ``"digits"``.
        arch: (auto, when ``base`` is not an ``nn.Module``) the architecture to build.
        criterion: (auto) ``clean``, ``corrupted``, ``robust`` or a weighted sum such as
            ``clean=1,corrupted=1`` (:func:`rws.recipes.alpha.parse_criterion`).
        grid: (auto) α values; default 0, 0.1, …, 1.
        max_robust_drop: (auto) largest allowed fall of PGD accuracy below the base's (a
            fraction); None: no constraint.
        corruptions, severity: (auto) the corrupted validation copy; default: the 15 benchmark
            corruptions at severities 1–5 when the criterion uses ``corrupted``.
        attack_eps, attack_steps: (auto) PGD of the robust metric; measured when the criterion
            or the constraint needs it.
        seed, device, progress: (auto) seeds, where to evaluate, a progress bar.
        extract_options: passed to :func:`rws.extract` (codec, include, shallow, name, tags …).

    Returns:
        The patch (kind ``interpolation``, ``scale = α``); with ``auto`` its provenance holds the
        α curve (``alpha_curve``).

    Example:
        >>> p = rws.interpolate(at_model, tuned_model, alpha="auto", data="digits",
        ...                     criterion="clean", max_robust_drop=0.01)  # doctest: +SKIP
    """
    patch = extract(base, tuned, method="interpolation", **extract_options)
    if alpha != "auto":
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            raise UsageError(f"--alpha {alpha!r}: give a number or auto")
        a = float(alpha)
        return patch.replace(scale=a, provenance={**patch.provenance, "alpha": a})
    curve = _auto_alpha(
        patch, base, data=data, arch=arch, criterion=criterion, grid=grid,
        max_robust_drop=max_robust_drop, corruptions=corruptions, severity=severity,
        attack_eps=attack_eps, attack_steps=attack_steps, seed=seed, device=device,
        progress=progress,
    )  # fmt: skip
    chosen = curve.chosen.alpha
    prov = {**patch.provenance, "alpha": chosen, "alpha_curve": curve.to_dict()}
    return patch.replace(scale=chosen, provenance=prov)


def _auto_alpha(
    patch: Patch, base: Source, *, data: Any, arch: str | None, **kw: Any
) -> AlphaCurve:
    if data is None:
        raise UsageError("--alpha auto needs validation data (--data)")
    dataset = load_dataset(data) if isinstance(data, str) else data
    if isinstance(base, nn.Module):
        model = base
    elif arch is None:
        raise UsageError("--alpha auto on checkpoint files needs the architecture (--arch)")
    else:
        model = load_model(arch, base, dataset.num_classes)  # type: ignore[arg-type]
    crit = parse_criterion(kw["criterion"])
    corruptions = kw["corruptions"]
    if corruptions is None:
        corruptions = CORRUPTIONS if crit.get("corrupted") else ()
    needs_attack = bool(crit.get("robust")) or kw["max_robust_drop"] is not None
    grid = kw["grid"]
    settings = AlphaSettings(
        criterion=crit, max_robust_drop=kw["max_robust_drop"], corruptions=tuple(corruptions),
        severity=kw["severity"], attack_eps=kw["attack_eps"],
        attack_steps=kw["attack_steps"] if needs_attack else 0, seed=kw["seed"],
        **({"grid": tuple(grid)} if grid is not None else {}),
    )  # fmt: skip
    with on_device(model, kw["device"]):
        return alpha_curve(model, patch, dataset.val, settings, progress=kw["progress"])
