"""From per-example correctness to a :class:`Variant` and its tests against the unpatched model.

Shared by the in-memory evaluation (:mod:`rws.robustness.evaluate`) and the streamed one
(:mod:`rws.robustness.streaming`), so both report the same numbers from the same correctness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rws.patching.patch import Patch
from rws.robustness.stats import accuracy, add_holm, compare, compare_pooled
from rws.robustness.variant import Variant
from rws.runtime.seed import derived_seed

Cell = tuple[str, int]


def unique_name(name: str, used: set[str]) -> str:
    """``name``, primed (``fog'``, ``fog''`` …) until it is not in ``used``; added to ``used``.

    Example:
        >>> used = {"base", "fog"}
        >>> unique_name("fog", used), unique_name("fog", used), unique_name("snow", used)
        ("fog'", "fog''", 'snow')
    """
    while name in used:
        name += "'"
    used.add(name)
    return name


def patch_info(item: Patch | tuple[Patch, float]) -> tuple[str, dict[str, Any]]:
    """A patched variant's name (the patch label, ``@α`` when scaled) and its report entry
    ``{"name", "alpha", "scale", "fingerprint", "source"}``."""
    p, alpha = item if isinstance(item, tuple) else (item, None)
    name = p.label + ("" if alpha is None else f"@{alpha:g}")
    info = {"name": p.label, "alpha": 1.0 if alpha is None else float(alpha), "scale": p.scale,
            "fingerprint": p.fingerprint(), "source": p.source}  # fmt: skip
    return name, info


def build_variant(
    name: str,
    patches: list[dict[str, Any]],
    res: dict[str, torch.Tensor],
    cells: Sequence[Cell],
    attacks: Sequence[str],
) -> Variant:
    """A variant's accuracies from its per-example correctness ``res`` (keys ``"clean"``,
    ``"fog/3"``, ``"robust/pgd"``)."""
    corr: dict[str, dict[int, float]] = {}
    for c, s in cells:
        corr.setdefault(c, {})[s] = accuracy(res[f"{c}/{s}"])
    accs = [a for sev in corr.values() for a in sev.values()]
    return Variant(
        name=name, patches=patches, clean=accuracy(res["clean"]), corruptions=corr,
        mean_corruption=sum(accs) / len(accs) if accs else None, mce=None,
        robust={a: accuracy(res[f"robust/{a}"]) for a in attacks}, per_example=res,
    )  # fmt: skip


def versus_base(
    base: Variant, v: Variant, cells: Sequence[Cell], attacks: Sequence[str], seed: int
) -> dict[str, Any]:
    """Tests against the unpatched model: McNemar per cell, Wilcoxon over images per pooled row,
    Holm-adjusted over every tested row of this variant (:mod:`rws.robustness.stats`)."""
    pb, pv = base.per_example, v.per_example
    family: list[dict[str, Any]] = []

    def tested(cmp: dict[str, Any]) -> dict[str, Any]:
        family.append(cmp)
        return cmp

    def cell(key: str) -> dict[str, Any]:
        return tested(compare(pb[key], pv[key]))

    def pooled(name: str, keys: list[str]) -> dict[str, Any]:
        # (images, cells): every cell holds the same images in the same order
        b, o = (torch.stack([p[k] for k in keys], dim=1) for p in (pb, pv))
        return tested(compare_pooled(b, o, seed=derived_seed(seed, "bootstrap", name)))

    out: dict[str, Any] = {"clean": cell("clean"), "corruptions": {}}
    for c, sev in v.corruptions.items():
        out["corruptions"][c] = pooled(c, [f"{c}/{s}" for s in sev])
        out["corruptions"][c]["severities"] = {s: cell(f"{c}/{s}") for s in sev}
    if cells:
        out["mean_corruption"] = pooled("mean_corruption", [f"{c}/{s}" for c, s in cells])
    out["mce"] = None if v.mce is None or base.mce is None else v.mce - base.mce
    out["robust"] = {a: cell(f"robust/{a}") for a in attacks}
    add_holm(family)
    return out
