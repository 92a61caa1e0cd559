"""The operating-point options of ``rws extract`` and ``rws compose --search``, and what they print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rws.cli.console import err, out
from rws.cli.options import choice, parse_corruptions
from rws.cli.render import alpha_table, composition_table
from rws.errors import UsageError
from rws.io.figures import save_figure
from rws.patching.patch import Patch
from rws.recipes.alpha import parse_criterion
from rws.robustness.corruptions import list_corruptions

AlphaOpt = Annotated[
    str | None,
    typer.Option(
        "--alpha",
        help="Scale α: a number, or auto (chosen on --data under --max-clean-drop). Default "
        "without it: 0.5 for --method rws (the safest measured), 1 for the other methods.",
        metavar="<A|auto>",
    ),
]
LayersOpt = Annotated[
    str | None,
    typer.Option(
        help="--alpha auto: also choose how many shallow layers to keep (auto).", metavar="<auto>"
    ),
]
SearchCorruptionsOpt = Annotated[
    str | None,
    choice(
        "--corruptions",
        "--corruption",
        help="Search: corruptions to measure (default: the patches' own, from tags or training).",
        kind="corruption",
        names=list_corruptions(),
        listed=True,
        metavar="<NAME,…>",
    ),
]
MaxCleanDropOpt = Annotated[
    float | None,
    typer.Option(help="Search: largest clean-accuracy fall allowed, in points (default 1)."),
]
MaxRobustDropOpt = Annotated[
    float | None, typer.Option(help="Search: largest PGD-accuracy fall allowed, in points.")
]
SearchCriterionOpt = Annotated[
    str | None,
    typer.Option(
        "--criterion",
        help="Search: what to maximise (default corrupted; interpolation: clean).",
        metavar="<clean|corrupted|robust|a=1,b=1>",
    ),
]


def parse_alpha(text: str | None) -> float | str | None:
    """``None`` / ``"auto"`` / a number.

    Raises:
        UsageError: anything else.
    """
    if text is None or text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--alpha {text!r}: give a number or auto") from None


def search_keywords(
    *,
    alpha: float | str | None,
    data: str | None,
    layers: str | None,
    corruptions: str | None,
    criterion: str | None,
    max_clean_drop: float | None,
    max_robust_drop: float | None,
    plot: Path | None,
) -> dict[str, Any]:
    """The search keywords the library takes, checked against ``--alpha``.

    Raises:
        UsageError: search options without ``--alpha auto``; ``--alpha auto`` without ``--data``;
            ``--layers`` other than auto.
    """
    given = {"--data": data, "--layers": layers, "--corruptions": corruptions,
             "--criterion": criterion, "--max-clean-drop": max_clean_drop,
             "--max-robust-drop": max_robust_drop, "--plot": plot}  # fmt: skip
    if alpha != "auto":
        used = [k for k, v in given.items() if v is not None]
        if used:
            raise UsageError(f"{', '.join(used)} go with --alpha auto")
        return {}
    if data is None:
        raise UsageError("--alpha auto needs validation data (--data)")
    if layers not in (None, "auto"):
        raise UsageError(f"--layers {layers!r}: only auto (or --shallow K for a fixed count)")
    search: dict[str, Any] = {}
    if corruptions is not None:
        search["corruptions"] = list(parse_corruptions(corruptions))
    if criterion is not None:
        search["criterion"] = parse_criterion(criterion)
    if max_clean_drop is not None:
        search["max_clean_drop"] = max_clean_drop
    if max_robust_drop is not None:
        search["max_robust_drop"] = max_robust_drop
    return search


def render_operating_point(patch: Patch, plot: Path | None) -> None:
    """The α curve, the choice in words (or that no search was made), and the plot."""
    from rws.recipes.alpha import AlphaCurve
    from rws.recipes.plots import plot_alpha_curve

    op = patch.provenance.get("operating_point")
    if not op:
        why = ""
        if patch.provenance.get("alpha_default"):
            why = " (the safest measured default for this method; --alpha 1 for the full delta)"
        err.print(
            f"note: no operating-point search: {patch.label} is applied at α = {patch.scale:g}"
            f"{why} on the selected layers; --alpha auto --data D chooses α under a clean budget",
            markup=False,
        )
        return
    curve = AlphaCurve.from_dict(op["curve"])
    out.print(alpha_table(curve))
    base, chosen = curve.base, curve.chosen
    layers = "every layer" if op["layers"] is None else f"the first {op['layers']} layer(s)"
    budget = op["rule"]["max_clean_drop"]
    if not op["budget_met"]:
        err.print(
            f"warning: no α > 0 kept validation clean accuracy within {budget:g} point(s): α = 0 "
            "was chosen, the patch changes nothing",
            markup=False,
        )
    else:
        out.print(
            f"operating point: α = {chosen.alpha:g} on {layers}; validation clean "
            f"{100 * base.clean:.1f} → {100 * chosen.clean:.1f}, corrupted "
            f"{100 * base.corrupted:.1f} → {100 * chosen.corrupted:.1f} "
            f"({op['data']['n_examples']} examples)",
            markup=False,
        )
    if plot is not None:
        save_figure(plot_alpha_curve(curve, title=f"{patch.label}: operating point"), plot)
        out.print(f"wrote {plot}", markup=False)


def render_composition(patch: Patch, labels: list[str]) -> None:
    """The searched coefficients against the uniform and single-patch points."""
    res = patch.provenance["composition_search"]
    out.print(composition_table(res, labels))
    if not res["budget_met"]:
        err.print(
            "warning: no combination kept validation clean accuracy within "
            f"{res['rule']['max_clean_drop']:g} point(s): every coefficient is 0",
            markup=False,
        )
