"""``rws.extract`` with its operating point: a patch whose scale α (and optionally layer count) is
chosen on validation data under a clean-accuracy budget (:mod:`rws.recipes.operating_point`).

Without ``alpha="auto"`` it is :func:`rws.methods.extract.extract` at the α given, or at
:data:`DEFAULT_ALPHA` (0.5 for a Robust Weight Signature, 1 for the other methods), and the patch's
provenance says that no search was made (``operating_point: None``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from rws.errors import UsageError
from rws.io.checkpoint import Source
from rws.methods.extract import extract as extract_patch
from rws.methods.extract import warn_guessed
from rws.patching.patch import Patch
from rws.recipes.alpha import DEFAULT_GRID, DEFAULT_REFINE, AlphaSettings, parse_criterion
from rws.recipes.interpolation import interpolate
from rws.recipes.operating_point import (
    Layers,
    model_for,
    patch_corruptions,
    search_operating_point,
    with_operating_point,
)
from rws.recipes.order import extraction_order
from rws.recipes.validation import validation_split
from rws.runtime.device import on_device

__all__ = ["DEFAULT_ALPHA", "SearchOptions", "extract", "search_settings"]

# α without an operating-point search, per method (others: 1). For a Robust Weight Signature the
# safest measured choice: α = 0.5 costs less clean accuracy than α = 1 on all three networks
# measured, e.g. on the built-in ResNet-20, every layer: 2.0-10.2 clean points against 11.6-63.6,
# keeping 74-84 % of the robust models' gains against -34-62 %; on a small CNN without BatchNorm
# 1.3-40.9 points against 6.4-57.8 (benchmarks/bench_safe_defaults.py). A ``delta`` keeps α = 1:
# it is the fine-tuned model itself.
DEFAULT_ALPHA = {"rws": 0.5}

SearchOptions = Mapping[str, Any]


def search_settings(
    patch: Patch,
    *,
    corruptions: Sequence[str] | None = None,
    criterion: str | Mapping[str, float] = "corrupted",
    max_clean_drop: float | None = 1.0,
    max_robust_drop: float | None = None,
    grid: Sequence[float] | None = None,
    refine: float = DEFAULT_REFINE,
    severity: tuple[int, int] = (1, 5),
    attack_eps: float | str = 8 / 255,
    attack_steps: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    copy: Literal["full", "cycled"] = "full",
) -> AlphaSettings:
    """The α-search settings for one patch; ``corruptions=None`` means the patch's own (tags or
    the robust model's recorded training).

    Raises:
        UsageError: the criterion needs corruptions and neither the caller nor the patch names any.
    """
    crit = parse_criterion(criterion)
    found = list(corruptions) if corruptions is not None else patch_corruptions(patch)
    if crit.get("corrupted") and not found:
        raise UsageError(
            f"{patch.label}: name the corruptions to measure (--corruptions / corruptions=[…]); "
            "neither the patch's tags nor its robust checkpoint record one"
        )
    needs_attack = bool(crit.get("robust")) or max_robust_drop is not None
    return AlphaSettings(
        grid=tuple(grid) if grid is not None else DEFAULT_GRID, refine=refine, criterion=crit,
        max_clean_drop=max_clean_drop, max_robust_drop=max_robust_drop, corruptions=tuple(found),
        severity=severity, attack_eps=attack_eps, attack_steps=attack_steps if needs_attack else 0,
        batch_size=batch_size, seed=seed, copy=copy,
    )  # fmt: skip


def extract(
    base: Source,
    tuned: Source,
    *,
    method: str = "delta",
    alpha: float | str | None = None,
    layers: Layers = None,
    data: Any = None,
    arch: str | None = None,
    device: str = "auto",
    progress: bool = False,
    search: SearchOptions | None = None,
    **options: Any,
) -> Patch:
    """Extract a patch (:func:`rws.methods.extract.extract`) and, with ``alpha="auto"``, choose its
    operating point on ``data``'s validation split.

    Args:
        base, tuned: ``nn.Module``s, state dicts or checkpoint paths of one architecture.
        method: a registered method (``rws.list_methods()``).
        alpha: None (no search: :data:`DEFAULT_ALPHA`, 0.5 for ``rws``, else 1), a number (the
            scale; 1 is the paper's ``Wc + RWSk``), or ``"auto"``: the α that maximises
            the criterion (default: mean accuracy over the patch's corruptions) while clean
            accuracy stays within ``max_clean_drop`` points (default 1) of the base's.
        layers: (auto) ``"auto"`` also chooses how many shallow layers to keep, jointly with α.
        data: (auto) a dataset spec (``"digits"``, ``"folder:DIR"`` …: its validation split), an
            ``(x, y)`` pair or a DataLoader.
        arch: the architecture, when ``base`` is a checkpoint file: its forward pass gives the
            depth order ``shallow``/``energy``/``layers`` count in (unless ``order`` is given),
            and (auto) the search builds it.
        device, progress: where the search evaluates; a progress bar.
        search: (auto) keywords of :func:`search_settings`: ``corruptions``, ``criterion``,
            ``max_clean_drop``, ``max_robust_drop``, ``grid``, ``refine``, ``severity`` …
        options: :func:`rws.methods.extract.extract`'s (codec, shallow, origin, order, name,
            tags …); ``order`` may also name an architecture (its forward pass), and without it
            the order comes from ``arch`` or the arch the checkpoints record
            (:func:`rws.recipes.order.extraction_order`).
            Search keywords given here directly are taken as ``search`` ones.

    Returns:
        The patch; with ``auto`` its ``scale`` is the chosen α, its provenance holds the search
        (``operating_point``: rule, curve, data fingerprint) and, with ``layers="auto"``, only the
        chosen layers are stored.

    Raises:
        UsageError: ``auto`` without data, with too few examples, labels that do not fit the model,
            a checkpoint base without ``arch``; ``layers`` without ``alpha="auto"``.

    Example:
        >>> p = rws.extract(clean, robust, method="rws", origin=w0, alpha="auto",
        ...                 data=(x_val, y_val), corruptions=["fog"], max_clean_drop=1.0)  # doctest: +SKIP
    """
    search = dict(search or {})
    for key in _SEARCH_KEYS & options.keys():
        search[key] = options.pop(key)
    options["order"] = extraction_order(options.get("order"), base, tuned, arch)
    if method == "interpolation":
        return interpolate(base, tuned, alpha=alpha, data=data, arch=arch, device=device,
                           progress=progress, **search, **options)  # fmt: skip
    if alpha != "auto":
        if layers is not None or data is not None or search:
            raise UsageError("layers, data and the search settings go with alpha='auto'")
        patch = extract_patch(base, tuned, method=method, **options)
        prov = {**patch.provenance, "operating_point": None}
        if alpha is None and method in DEFAULT_ALPHA:
            a = DEFAULT_ALPHA[method]
            return patch.replace(scale=a, provenance={**prov, "alpha": a, "alpha_default": True})
        if alpha is None:
            return patch.replace(provenance=prov)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            raise UsageError(f"--alpha {alpha!r}: give a number or auto")
        return patch.replace(scale=float(alpha), provenance={**prov, "alpha": float(alpha)})
    split = validation_split(data)  # before the extraction: no data fails fast
    patch = extract_patch(base, tuned, method=method, **options)
    if layers == "auto":
        warn_guessed(patch.provenance["selection"]["order"]["source"], patch.provenance["base"])
    settings = search_settings(patch, **search)
    model = model_for(base, arch, split)
    with on_device(model, device):
        op = search_operating_point(model, patch, split, settings, layers=layers, progress=progress)
    return with_operating_point(patch, op)


_SEARCH_KEYS = frozenset(inspect.signature(search_settings).parameters) - {"patch"}
