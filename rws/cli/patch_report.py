"""What the patch commands print: ``rws apply`` and ``rws remove`` (fingerprint checks, what was
verified, the exact undo file, and their undo options), ``rws diff``'s rows."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from rws.cli.console import err, out
from rws.patching.files import FileResult

UndoFlag = Annotated[
    bool,
    typer.Option(
        "--undo",
        help="Also write OUT.undo.safetensors: the low bits rounding drops, so that "
        "`rws remove` restores every bit.",
    ),
]
UndoFileOpt = Annotated[
    str | None,
    typer.Option(
        help="The exact-undo file `rws apply --undo` wrote (default: PATCHED.undo.safetensors "
        "when it exists)."
    ),
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Write nothing unless every tensor is verified.")
]


def render_apply(res: FileResult) -> None:
    """Warnings, the fingerprint counts and the applied stack; the undo file and its size."""
    rep = res.report
    for w in rep.warnings:
        err.print(f"warning: {w}", markup=False)
    unchecked = f", {len(rep.unchecked)} unchecked (no fingerprint)" if rep.unchecked else ""
    n = rep.whole_base
    whole = "" if not n else ", whole-base sha256 verified" + (f" for {n} patches" if n > 1 else "")
    out.print(
        f"wrote {res.output}: {rep.touched} tensors patched, base fingerprints "
        f"{rep.exact}/{rep.checked} matched{whole}{unchecked}; applied stack: "
        + ", ".join(f"{e['name']}:{e['scale']:g}" for e in res.stack),
        markup=False,
    )
    if res.undo_path and rep.undo is not None:
        size = os.path.getsize(res.undo_path)
        share = size / max(1, _size(res.output))
        out.print(
            f"wrote {res.undo_path}: exact undo, {rep.undo.elements()} elements corrected, "
            f"{size} bytes ({100 * share:.3g} % of the output)",
            markup=False,
        )


def _size(path: str) -> int:
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def render_remove(res: FileResult) -> None:
    """Tensors restored, how many verified bit-exact against the base fingerprints, the rest
    unverified by name."""
    rep = res.report
    for w in rep.warnings:
        err.print(f"warning: {w}", markup=False)
    unverified = ""
    if rep.unverified:
        more = ", …" if len(rep.unverified) > 5 else ""
        unverified = f"; {len(rep.unverified)} unverified: {', '.join(rep.unverified[:5])}{more}"
    used = f" (exact undo: {res.undo_path})" if res.undo_path else ""
    out.print(
        f"wrote {res.output}: {rep.touched} tensors restored, {rep.exact} verified bit-exact "
        f"against the base fingerprints{used}{unverified}",
        markup=False,
    )


def layer_row(la: Any) -> dict[str, Any]:
    """One ``rws diff`` row (JSON-ready) from a :class:`~rws.methods.extract.LayerDelta`."""
    weights = {"delta_l2": la.weights_delta_l2, "base_l2": la.weights_base_l2,
               "relative": la.weights_relative}  # fmt: skip
    stats = {"delta_l2": la.stats_delta_l2, "base_l2": la.stats_base_l2,
             "relative": la.stats_relative}  # fmt: skip
    return {"layer": la.layer, "tensors": len(la.tensors), "delta_l2": la.delta_l2,
            "base_l2": la.base_l2, "relative": la.relative, "weights": weights,
            "running_stats": stats}  # fmt: skip
